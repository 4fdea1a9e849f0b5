"""External oracles (dosfstools, mtools): skip when missing, fail when CI requires them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest


def require_tool(*names: str) -> None:
    """Skip (or fail when MICROKERNEL_REQUIRE_ORACLES=1) unless every external oracle is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    reason = f"external oracle(s) not installed: {', '.join(missing)}"
    if os.environ.get("MICROKERNEL_REQUIRE_ORACLES") == "1":
        pytest.fail(reason + " (MICROKERNEL_REQUIRE_ORACLES=1)")
    pytest.skip(reason)


def oracle_env() -> dict[str, str]:
    """Environment for mtools: skip its geometry sanity check (images are plain files)."""
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8"}


def run_tool(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run an oracle tool, capturing output (bytes); the caller checks the return code."""
    return subprocess.run(list(args), capture_output=True, env=oracle_env(), timeout=120,
                          check=False)


def mtools_image(path: str | os.PathLike[str], offset: int = 0) -> str:
    """The mtools ``-i`` argument for an image whose volume starts at byte ``offset``."""
    return f"{os.fspath(path)}@@{offset}" if offset else os.fspath(path)


def fsck_fat(path: str | os.PathLike[str], offset: int = 0) -> subprocess.CompletedProcess[bytes]:
    """``fsck.fat -n`` on an image; a partition at ``offset`` is checked from a copy of it."""
    if not offset:
        return run_tool("fsck.fat", "-n", os.fspath(path))
    with tempfile.TemporaryDirectory() as tmp:
        part = os.path.join(tmp, "partition.img")
        with open(path, "rb") as src, open(part, "wb") as dst:
            src.seek(offset)
            shutil.copyfileobj(src, dst)
        return run_tool("fsck.fat", "-n", part)
