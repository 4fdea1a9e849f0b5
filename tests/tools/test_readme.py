"""The README's examples run as written: every ``sh`` and ``python`` block but the set-up.

Each block runs in a fresh directory with ``microkernel`` and ``python3`` on
``PATH`` meaning this checkout (small shims), so a stale installed copy cannot
make a broken example pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.oracles import require_tool
from tests.tools.helpers import REPO, env

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[str, str]]:
    """(language, code) of every runnable block; the install commands are not run."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    return [
        (lang, code) for lang, code in blocks if lang in ("sh", "python") and "apt-get" not in code
    ]


def _shims(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, argv in (
        ("microkernel", f'"{sys.executable}" -m microkernel'),
        ("python3", f'"{sys.executable}"'),
    ):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {argv} "$@"\n', encoding="utf-8")
        shim.chmod(0o755)


def test_the_readme_has_the_examples_it_should() -> None:
    kinds = [lang for lang, _ in examples()]
    assert kinds.count("python") == 1 and kinds.count("sh") >= 3
    assert any("--corr" in code for _, code in examples())
    assert any("drivers.conformance" in code for _, code in examples())


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs_as_written(index: int, tmp_path: Path) -> None:
    require_tool("mkfs.fat", "mdir")
    lang, code = examples()[index]
    _shims(tmp_path / "bin")
    work = tmp_path / "work"
    work.mkdir()
    environment = {**env(), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    if lang == "python":
        argv = [sys.executable, "-c", code]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    done = subprocess.run(
        argv, cwd=work, env=environment, capture_output=True, timeout=300, check=False
    )
    assert done.returncode == 0, (
        code,
        done.stdout.decode(errors="replace")[-2000:],
        done.stderr.decode(errors="replace")[-4000:],
    )
