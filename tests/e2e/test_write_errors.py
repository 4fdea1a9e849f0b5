"""Write errors reach the writer: close raises the error it met, fsync reports it once.

Python's own files raise from ``close()`` when the final flush fails; the
file library does the same when the data cannot reach the disk at the last
close. The pages stay dirty in the cache, so a retry after the fault clears
writes them.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import microkernel
from drivers.protocol import InjectFault
from microkernel.protocol import Ok
from tests.e2e.conftest import fsck_ok, mtype
from tests.oracles import require_tool

pytestmark = pytest.mark.anyio

MIB = 1 << 20
DATA = bytes(range(250)) * 200  # 50,000 bytes


async def _fail_data_writes(system: microkernel.System) -> None:
    """EIO on every write to the data region (metadata sectors keep working)."""
    fat = system.server("fat0")
    first_data = fat.volume.boot.data_start  # type: ignore[attr-defined]
    await system.kernel.call(
        "nvme0", InjectFault(fail_ranges=[(first_data, 1 << 30)], fail_writes_only=True), Ok
    )


async def test_close_raises_the_write_error_it_met(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=32 * MIB, fat=16)
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("writer")
        await _fail_data_writes(system)
        f = await proc.open("/lost.bin", "wb")
        await f.write(DATA)
        with pytest.raises(OSError) as failed:
            await f.close()
        assert failed.value.errno == errno.EIO
        await system.kernel.call("nvme0", InjectFault(), Ok)


async def test_fsync_reports_a_write_error_once_and_a_retry_after_the_fault_succeeds(
    tmp_path: Path,
) -> None:
    require_tool("mtype", "fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=32 * MIB, fat=16)
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("writer")
        async with await proc.open("/kept.bin", "wb") as f:
            await f.write(DATA)
            await _fail_data_writes(system)
            with pytest.raises(OSError) as failed:
                await f.fsync()
            assert failed.value.errno == errno.EIO
            await system.kernel.call("nvme0", InjectFault(), Ok)
            await f.fsync()  # the pages stayed dirty: now they reach the disk
        assert await proc.read_file("/kept.bin") == DATA
    fsck_ok(image)
    assert mtype(image, "/kept.bin") == DATA
