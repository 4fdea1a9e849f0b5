"""A crash image booted by the whole system: repaired before serving, counted, fsck-clean after."""

from __future__ import annotations

from pathlib import Path

import pytest

import microkernel
from drivers.recording import image_after
from tests.durability.harness import record
from tests.oracles import fsck_fat, require_tool

pytestmark = pytest.mark.anyio


async def test_booting_a_cut_image_repairs_counts_and_leaves_it_clean(tmp_path: Path) -> None:
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    journal = await record(image, seed=3, ops=16, interval=None)
    log = journal.log
    # The last cut point whose image mount repair has something to do (a crash mid-run).
    for cut in range(len(log.entries) - 1, 0, -1):
        image.write_bytes(image_after(log, cut))
        if fsck_fat(image).returncode != 0 and b"Reclaimed" in fsck_fat(image).stdout:
            break
    else:
        pytest.fail("no cut point left lost clusters")
    async with microkernel.boot(image=image, memory="32M") as system:
        assert system.statistics().volume_repairs >= 1
        proc = await system.spawn("p")
        await proc.write_file("/after.txt", b"served after the repair")
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()
