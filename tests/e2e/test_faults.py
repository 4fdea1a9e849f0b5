"""Bad input end to end: corrupt images, failing disks, crashing drivers, forged messages."""

from __future__ import annotations

import errno
from pathlib import Path

import anyio
import pytest

import microkernel
from drivers.base import BlockDriver
from drivers.protocol import InjectFault, Read
from microkernel.errors import CapabilityDenied, MessageDenied
from microkernel.ipc import Envelope
from microkernel.protocol import Ok
from servers.fs.protocol import FsStatFs, FsVolume
from servers.vfs.protocol import Stat
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype

pytestmark = pytest.mark.anyio

DATA = bytes(range(256)) * 4096  # 1 MiB


def driver_of(system: microkernel.System) -> BlockDriver:
    drv = system.server("nvme0")
    assert isinstance(drv, BlockDriver)
    return drv


async def test_corrupt_boot_sector_refuses_to_boot_with_a_typed_error(
    make_image: ImageFactory,
) -> None:
    image = make_image({})
    raw = bytearray(image.read_bytes())
    raw[510:512] = b"\0\0"
    image.write_bytes(bytes(raw))
    with pytest.raises(OSError, match="0x55AA") as info:
        async with microkernel.boot(image=image, memory="64M"):
            pass
    assert info.value.errno == errno.EIO


async def test_truncated_image_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "tiny.img"
    image.write_bytes(b"\0" * 1000)
    with pytest.raises(OSError):
        async with microkernel.boot(image=image, memory="64M"):
            pass


async def test_failing_disk_gives_eio_and_other_files_still_work(make_image: ImageFactory) -> None:
    image = make_image({"/bad.bin": DATA, "/good.txt": b"still fine"})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        fat = system.server("fat0")
        async with await proc.open("/bad.bin", "rb") as f:
            volume: FsVolume = await system.kernel.call("fat0", FsStatFs(), FsVolume)
            assert volume.aligned
            extents = await fat.volume.extents(f.name)  # type: ignore[attr-defined]
            first = extents[0]
            await system.kernel.call("nvme0", InjectFault(fail_ranges=[(first.lba + 100, 8)]), Ok)
            with pytest.raises(OSError) as info:
                await f.read()
            assert info.value.errno == errno.EIO
            await system.kernel.call("nvme0", InjectFault(), Ok)
            f.seek(0)
            assert await f.read() == DATA  # no poisoned page stayed in the cache
        assert await proc.read_file("/good.txt") == b"still fine"
    fsck_ok(image)


async def test_driver_crash_fails_in_flight_callers_and_the_system_goes_on(
    make_image: ImageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image({"/a.bin": DATA, "/b.bin": DATA[::-1]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        drv = driver_of(system)
        original = type(drv)._on_read
        crashes = {"left": 1}

        async def flaky(self: BlockDriver, env: Envelope, msg: Read) -> object:
            if crashes["left"]:
                crashes["left"] -= 1
                raise RuntimeError("firmware bug")
            return await original(self, env, msg)

        monkeypatch.setattr(type(drv), "_on_read", flaky)
        drv._handlers[Read] = flaky.__get__(drv)  # the handler table is bound at start
        with pytest.raises(OSError) as info:
            await proc.read_file("/a.bin")
        assert info.value.errno == errno.EIO
        assert drv.statistics().crashes == 1
        assert await proc.read_file("/a.bin") == DATA
        assert await proc.read_file("/b.bin") == DATA[::-1]


async def test_fsynced_data_survives_a_crash_of_the_whole_model(make_image: ImageFactory) -> None:
    """Data that was fsynced is on the image even if the system is never shut down cleanly."""
    image = make_image({})
    payload = DATA[:300_000]
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        f = await proc.open("/durable.bin", "wb")
        await f.write(payload)
        await f.fsync()
        # Simulate power loss: copy the image now, before any clean shutdown runs.
        snapshot = image.read_bytes()
    crashed = image.with_name("crashed.img")
    crashed.write_bytes(snapshot)
    assert mtype(crashed, "/durable.bin") == payload


async def test_processes_cannot_reach_servers_other_than_the_vfs(make_image: ImageFactory) -> None:
    image = make_image({})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        with pytest.raises(CapabilityDenied):
            await proc.kernel.endpoint.call("fat0", FsStatFs(), FsVolume)
        with pytest.raises(CapabilityDenied):
            await proc.kernel.endpoint.call("nvme0", InjectFault(hang=True), Ok)
        # A malformed body is rejected at the boundary, and the VFS keeps serving.
        router = system.router
        env = Envelope(proc.kernel.port, "vfs", router.next_id(), 0, 0, 1, "Stat", b"\x93\x01")
        future = router.expect_reply(env.id, "vfs")
        await router.deliver(env)
        with anyio.fail_after(5):
            reply = await future
        assert reply.kind == 3
        with pytest.raises(FileNotFoundError):
            await proc.syscall(Stat("/missing"), FsVolume)
        with pytest.raises(MessageDenied):
            await proc.syscall(FsStatFs(), FsVolume)  # not a syscall: the router refuses it


async def test_a_disk_that_stops_answering_gives_an_error_not_a_hang(
    make_image: ImageFactory,
) -> None:
    from microkernel.config import CacheConfig, DeviceConfig, SystemConfig

    image = make_image({"/slow.bin": DATA})
    cfg = SystemConfig(
        memory="64M",
        devices=[DeviceConfig(image=str(image), driver="nvme")],
        cache=CacheConfig(io_timeout=0.5),
    )
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("p")
        f = await proc.open("/slow.bin", "rb")
        await system.kernel.call("nvme0", InjectFault(hang=True), Ok)
        with anyio.fail_after(20):
            with pytest.raises(OSError):
                await f.read()
        await system.kernel.call("nvme0", InjectFault(), Ok)
        f.seek(0)
        assert await f.read() == DATA
        await f.close()


async def test_garbage_to_every_real_server_is_rejected_and_nobody_crashes(
    make_image: ImageFactory,
) -> None:
    import random

    image = make_image({"/ok.txt": b"still here"})
    rng = random.Random(99)
    async with microkernel.boot(image=image, memory="64M") as system:
        router = system.router
        for server in list(system.servers):
            for _ in range(40):
                body = rng.randbytes(rng.randrange(0, 40))
                env = Envelope("kernel", server.name, router.next_id(), 0, 0, 1, "Fuzz", body)
                future = router.expect_reply(env.id, server.name)
                await router.deliver(env)
                with anyio.fail_after(5):
                    reply = await future
                assert reply.kind == 3  # an error reply, never silence and never a crash
            assert server.statistics().crashes == 0, server.name
        proc = await system.spawn("p")
        assert await proc.read_file("/ok.txt") == b"still here"


@pytest.mark.parametrize("fat", [12, 16, 32])
async def test_damaged_chain_is_eio_for_that_file_only_through_the_stack(
    tmp_path: Path, fat: int
) -> None:
    from tests.fat.test_corrupt import clean_image, edit_fat

    image, first = await clean_image(tmp_path, fat)
    a = first["/a.bin"]
    edit_fat(image, {a + 1: a})  # a cycle in /a.bin's chain
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        with anyio.fail_after(10):
            with pytest.raises(OSError, match="cyclic") as info:
                await proc.read_file("/a.bin")
        assert info.value.errno == errno.EIO
        assert (await proc.read_file("/b.bin")).startswith(b"B")
        assert await proc.read_file("/d/e/f.txt") == b"ffff"
        assert all(s.statistics().crashes == 0 for s in system.servers)
