"""Handle lifetimes, page-level dirt and periodic writeback, through the whole stack (issue 9)."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import anyio
import pytest

import microkernel
from drivers.protocol import InjectFault
from microkernel.boot import System
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.protocol import Ok
from servers.cache.protocol import GiveBack, PageRun, SectorsReady
from servers.vfs.abi import PROCPAGE_OFFSET
from servers.vfs.core import WindowState
from servers.vfs.protocol import Data, Read, Write, Written
from servers.vfs.server import VfsServer
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype

pytestmark = pytest.mark.anyio

RNG = random.Random(9)
DATA = RNG.randbytes(1 << 20)


def vfs_of(system: System) -> VfsServer:
    server = system.server("vfs")
    assert isinstance(server, VfsServer)
    return server


async def _fetch_in_flight(vfs: VfsServer) -> int:
    """The tag of a fetch waiting for the (slow) disk; bounded wait."""
    with anyio.fail_after(10):
        while not vfs.pager.fetches:
            await anyio.sleep(0.001)
    return next(iter(vfs.pager.fetches))


async def test_close_during_an_inflight_cachepart_leaves_other_processes_alone(
    make_image: ImageFactory,
) -> None:
    """A handle closed while its miss waits for a slow disk: its read fails with EBADF,
    nothing is mapped into it afterwards, and a process that opened meanwhile (getting
    frames freed by the close) keeps its FileMap and per-process page intact."""
    image = make_image({"/a.bin": DATA, "/b.bin": DATA[:50_000]})
    async with microkernel.boot(image=image, memory="64M") as system:
        vfs = vfs_of(system)
        slow, other = await system.spawn("slow"), await system.spawn("other")
        f = await slow.open("/a.bin", "rb")
        handle = f.handle
        window = vfs.windows[handle]
        await system.kernel.call("nvme0", InjectFault(latency_s=0.4), Ok)
        failures: list[OSError] = []

        async def read() -> None:
            try:
                await f.read()
            except OSError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await _fetch_in_flight(vfs)
            await slow.kernel.endpoint.call("vfs", _close(handle), Ok)
            f.closed = True
            g = await other.open("/b.bin", "r+b")
            await system.kernel.call("nvme0", InjectFault(), Ok)
            assert await g.read(1000) == DATA[:1000]
            await g.write(b"mine")
            other_window = vfs.windows[g.handle]
            before = bytes(other_window.space.view(0, 3 * 4096))
        with anyio.fail_after(10):  # the slow fetch ends (its pins go back to the cache)
            while vfs.pager.fetches:
                await anyio.sleep(0.01)
        assert [e.errno for e in failures] == [errno.EBADF]
        assert window.state is WindowState.CLOSED and not window.mapped
        assert handle not in vfs.windows
        after = bytes(other_window.space.view(0, 3 * 4096))
        assert after == before
        assert other_window.procpage.position(0) == 1004
        await g.close()
    fsck_ok(image)
    assert mtype(image, "/b.bin") == DATA[:1000] + b"mine" + DATA[1004:50_000]


def _close(handle: int) -> object:
    from servers.vfs.protocol import Close

    return Close(handle)


async def test_a_file_kept_open_reaches_the_disk_within_two_writeback_intervals(
    make_image: ImageFactory,
) -> None:
    """No flush, fsync or close: the periodic scan hands the dirty pages to the cache."""
    image = make_image({"/kept.bin": DATA[:200_000]})
    interval = 1.0
    cfg = SystemConfig(
        memory="64M",
        devices=[DeviceConfig(image=str(image))],
        cache=CacheConfig(writeback_interval=interval),
    )
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("p")
        f = await proc.open("/kept.bin", "r+b")
        f.seek(100_000)
        await f.write(b"K" * 5000)
        expected = DATA[:100_000] + b"K" * 5000 + DATA[105_000:200_000]
        on_disk = b""
        with anyio.move_on_after(2 * interval + 1.0):  # + slack for mtype on a busy machine
            while on_disk != expected:
                await anyio.sleep(0.1)
                on_disk = await anyio.to_thread.run_sync(mtype, image, "/kept.bin")
        assert on_disk == expected
        assert not f.closed
        await f.close()
    fsck_ok(image)


async def test_one_byte_overwrite_and_fsync_writes_only_its_page(make_image: ImageFactory) -> None:
    image = make_image({"/big.bin": (DATA * 4)[: 4 << 20]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        f = await proc.open("/big.bin", "r+b")
        await f.view(0)  # map (and so cache) the whole file first
        f.seek(3_000_000)
        before = system.statistics().disk_write_bytes
        await f.write(b"!")
        await f.fsync()
        written = system.statistics().disk_write_bytes - before
        print("disk_write_bytes for a 1-byte overwrite + fsync:", written)
        assert 0 < written <= 64 * 1024, written
        await f.close()
    expected = bytearray((DATA * 4)[: 4 << 20])
    expected[3_000_000] = ord("!")
    assert mtype(image, "/big.bin") == bytes(expected)


async def test_isolation_bad_ranges_foreign_notifications_and_giveback(
    make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image({"/a.bin": DATA[:300_000]})
    async with microkernel.boot(image=image, memory="64M") as system:
        vfs = vfs_of(system)
        proc = await system.spawn("p")
        f = await proc.open("/a.bin", "r+b")
        for bad in (
            Read(f.handle, -1, 10),
            Read(f.handle, 0, -5),
            Read(f.handle, (1 << 63) - 2, 9),
        ):
            with pytest.raises(OSError) as info:
                await proc.syscall(bad, Data)
            assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError) as info:
            await proc.syscall(Write(f.handle, -4096, b"x"), Written)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError) as info:  # the router refuses it before the VFS sees it
            await proc.kernel.endpoint.call("vfs", GiveBack(1, 10**6), Ok)
        assert info.value.errno == errno.EPERM
        # A process forging the cache's notification for a live tag has no effect.
        await system.kernel.call("nvme0", InjectFault(latency_s=0.2), Ok)
        async with anyio.create_task_group() as tg:
            result: list[bytes] = []

            async def read() -> None:
                result.append(await f.read())

            tg.start_soon(read)
            tag = await _fetch_in_flight(vfs)
            forged = SectorsReady(tag, "nvme0", [PageRun(0, 1, 0)])
            with pytest.raises(OSError) as info:
                await proc.kernel.endpoint.send("vfs", forged)
            assert info.value.errno == errno.EPERM
            await system.kernel.call("nvme0", InjectFault(), Ok)
        assert result == [DATA[:300_000]]
        assert bytes(vfs.windows[f.handle].space.view(PROCPAGE_OFFSET, 8)) != b""
        await f.close()
