"""Start-up: a one-shot command imports only what it needs.

structlog (and rich, which its console renderer pulls in) load on the first log
event or trace, not at import; entry-point metadata only for a driver name that
is not built in. Checked in a fresh interpreter, by what ``sys.modules`` holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, env=env, check=True, timeout=60, text=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_booting_imports_neither_structlog_nor_rich_nor_metadata() -> None:
    loaded = _modules_after(
        "import microkernel, microkernel.cli\n"
        "from drivers.registry import load_driver\n"
        "load_driver('nvme')\n"
        "from microkernel.trace import configure_logging, log\n"
        "configure_logging(level='warning')\n"
        "log.bind(server='x')"
    )
    assert "microkernel.boot" in loaded and "drivers.nvme" in loaded
    ours = loaded - _modules_after("pass")  # what the interpreter's site loads is not ours
    for heavy in ("structlog", "rich", "importlib.metadata", "clients.bench", "microkernel.sim"):
        assert heavy not in ours, heavy


def test_the_first_event_loads_structlog_with_the_configured_level() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "from microkernel.trace import configure_logging, log\n"
        "configure_logging(level='warning', json_console=True)\n"
        "l = log.bind(server='s1')\n"
        "l.info('hidden')\n"
        "l.warning('shown', n=3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, check=True, timeout=60,
        text=True,
    )
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(e["event"], e["server"], e["level"]) for e in events] == [("shown", "s1", "warning")]
    assert events[0]["n"] == 3
