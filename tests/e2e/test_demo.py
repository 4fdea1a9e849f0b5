"""The demo workload behind ``microkernel run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import microkernel
from clients.demo import run_demo
from microkernel.stats import SCALAR_COUNTERS
from tests.e2e.conftest import fsck_ok, mtype
from tests.oracles import require_tool

pytestmark = pytest.mark.anyio


async def test_demo_moves_all_file_data_without_copying(tmp_path: Path) -> None:
    require_tool("fsck.fat", "mtype")
    image = tmp_path / "demo.img"
    microkernel.mkfs(image, size="272M", fat=32, cluster_size=4096)
    async with microkernel.boot(image=image, memory="128M") as system:
        report = await run_demo(system, files=2, records=100, tiny_reads=3000, stream_size=4 << 20)
    assert report.errors == []
    assert report.files_written == 2
    assert report.tiny_reads == 3000
    assert report.tiny_read_syscalls < 50  # thousands of reads, a handful of misses
    assert report.stats is not None
    assert report.stats.bytes_copied == 0
    assert report.stats.partial_sector_writes == 0
    assert report.bytes_verified >= 4 << 20
    fsck_ok(image)
    assert mtype(image, "/demo/log-1.txt").startswith(b"writer 1 record 000000 ")


def test_microkernel_run_cli_on_a_fresh_image(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    done = subprocess.run(
        [sys.executable, "-m", "microkernel", "--stats", str(stats), "run"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bytes_copied" in done.stdout
    counters = json.loads(stats.read_text())
    assert counters["bytes_copied"] == 0
    assert counters["messages_total"] > 1000
    for key in (*SCALAR_COUNTERS, "messages_by_type"):
        assert key in counters
