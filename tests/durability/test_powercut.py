"""Power cuts at every point of a recorded workload, on FAT12 (copy path), FAT16 and FAT32.

See :mod:`tests.durability.harness` for what each crash state must satisfy.
The bounded form runs here; a longer sweep checks every state of bigger
workloads over many seeds (``python3 -m tests.durability.sweep --seeds 20 --ops 60``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import microkernel
from tests.durability.harness import Tally, check_all, record
from tests.oracles import require_tool

pytestmark = pytest.mark.anyio

# FAT12 with 2 KiB clusters and FAT32 with 512-byte clusters take the copy path
# (clusters smaller than a page); FAT16 with 4 KiB clusters the zero-copy path.
VOLUMES = {12: ("4M", 2048), 16: ("16M", 4096), 32: ("34M", 512)}
# Cache writeback every 0 s (as fast as it can), every 50 ms, or never (off).
INTERVALS = [0.0, 0.05, None]
# Every crash state on FAT12/16; on FAT32 (a 34 MiB image, slow to fsck) every 5th.
STRIDE = {12: 1, 16: 1, 32: 5}


async def run_powercut(tmp_path: Path, fat: int, interval: float | None, *, seed: int,
                       ops: int, stride: int) -> Tally:
    require_tool("fsck.fat")
    size, cluster = VOLUMES[fat]
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=size, fat=fat, cluster_size=cluster)
    journal = await record(image, seed=seed, ops=ops, interval=interval)
    return await check_all(journal, tmp_path, seed=seed, samples=2, stride=stride)


@pytest.mark.parametrize("interval", INTERVALS, ids=["wb0", "wb50ms", "wboff"])
@pytest.mark.parametrize("fat", [12, 16, 32])
async def test_every_cut_point_is_repairable_and_keeps_fsynced_files(
        tmp_path: Path, fat: int, interval: float | None) -> None:
    tally = await run_powercut(tmp_path, fat, interval, seed=fat * 10 + 1, ops=24,
                               stride=STRIDE[fat])
    print(f"FAT{fat} interval={interval}: {tally.summary()}")
    assert tally.failures == [], tally.summary()
    assert tally.damaged == 0 and tally.repair_failed == 0 and tally.fsynced_lost == 0
    assert tally.prefixes > 10 and tally.reorders > 0 and tally.fsynced_checked > 0
    assert tally.repaired == tally.states
