"""A volume in an MBR partition with an old 63-sector start, through the whole stack."""

from __future__ import annotations

from pathlib import Path

import pytest

import microkernel
from tests.oracles import fsck_fat, mtools_image, require_tool, run_tool

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("driver", ["nvme", "ahci", "ide-pio"])
async def test_partition_at_sector_63(tmp_path: Path, driver: str) -> None:
    require_tool("fsck.fat", "mdir")
    image = tmp_path / "part.img"
    microkernel.mkfs(image, size="40M", fat=16, partition_start=63)
    payload = bytes(range(256)) * 1000
    async with microkernel.boot(image=image, memory="64M", driver=driver, partition=1) as system:
        proc = await system.spawn("p")
        volume = await proc.statfs()
        assert volume.partition_start == 63
        assert volume.aligned  # mkfs aligns the data region to the disk, not the partition
        await proc.write_file("/in-partition.bin", payload)
        assert await proc.read_file("/in-partition.bin") == payload
        stats = system.statistics()
    if driver == "ide-pio":
        assert stats.bytes_copied > 0  # PIO moves every sector through the CPU
    else:
        assert stats.bytes_copied == 0
    assert stats.partial_sector_writes == 0
    assert fsck_fat(image, offset=63 * 512).returncode == 0
    listing = run_tool("mdir", "-b", "-i", mtools_image(image, 63 * 512), "::/").stdout
    assert b"in-partition.bin" in listing.lower()
    raw = image.read_bytes()
    assert raw[510:512] == b"\x55\xaa" and raw[0x1BE + 8 : 0x1BE + 12] == (63).to_bytes(4, "little")
