"""End to end: processes, the kernel file driver, FileMaps, the cache and the FAT server."""

from __future__ import annotations

import errno
import hashlib
import random

import anyio
import pytest

import microkernel
from microkernel.boot import System
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from servers.vfs.abi import DATA_OFFSET
from servers.vfs.filemap import iter_parts
from servers.vfs.server import VfsServer
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype

pytestmark = pytest.mark.anyio

RNG = random.Random(1234)
BIG = RNG.randbytes(3 * 1024 * 1024 + 123)
SMALL = b"hello, zero-copy world\n" * 50


def vfs_of(system: System) -> VfsServer:
    server = system.server("vfs")
    assert isinstance(server, VfsServer)
    return server


async def test_reads_match_mtools_byte_for_byte(make_image: ImageFactory) -> None:
    image = make_image({"/big.bin": BIG, "/docs/notes.txt": SMALL})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("reader")
        assert sorted(await proc.listdir("/")) == ["big.bin", "docs"]
        async with await proc.open("/docs/notes.txt", "rb") as f:
            assert await f.read() == SMALL
        async with await proc.open("/BIG.BIN", "rb") as f:  # case-insensitive lookup
            assert f.size == len(BIG)
            assert await f.read(1000) == BIG[:1000]
            f.seek(2_000_000)
            assert await f.read(10) == BIG[2_000_000:2_000_010]
            view = await f.view(0)
            assert view.readonly and bytes(view) == BIG
        stats = system.statistics()
        assert stats.bytes_copied == 0
        assert stats.bytes_zero_copy >= len(BIG)


async def test_hits_need_no_message(make_image: ImageFactory) -> None:
    image = make_image({"/font.ttf": BIG[: 1 << 20]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("font-parser")
        async with await proc.open("/font.ttf", "rb") as f:
            await f.view(0)  # map the whole file
            before_msgs, before_calls = system.counters.messages_total, proc.syscalls
            rng = random.Random(5)
            for _ in range(2000):
                off = rng.randrange((1 << 20) - 16)
                f.seek(off)
                assert await f.read(7) == BIG[off : off + 7]
            assert system.counters.messages_total == before_msgs
            assert proc.syscalls == before_calls


async def test_processes_share_one_set_of_frames(make_image: ImageFactory) -> None:
    image = make_image({"/shared.bin": BIG[: 512 * 1024]})
    async with microkernel.boot(image=image, memory="64M") as system:
        procs = [await system.spawn(f"p{i}") for i in range(20)]
        files = [await p.open("/shared.bin", "rb") for p in procs]
        free_after_first = None
        for i, f in enumerate(files):
            assert bytes(await f.view(0)) == BIG[: 512 * 1024]
            if i == 0:
                free_after_first = system.memory.frames_free
                fs_messages = system.counters.messages_by_type["MapRange"]
        # Already-cached frames are mapped into the others without a file-system message.
        assert system.counters.messages_by_type["MapRange"] == fs_messages
        assert free_after_first is not None
        # Later processes cost only their control pages, never another copy of the data.
        assert free_after_first - system.memory.frames_free <= 3 * 19
        vfs = vfs_of(system)
        (cfile,) = [c for c in vfs.files.values() if c.info.name == "shared.bin"]
        assert len(cfile.pages) == 128
        frames = {p: fp.phys for p, fp in cfile.pages.items()}
        for w in cfile.windows:
            for page, phys in frames.items():
                assert w.space.frame_at(DATA_OFFSET + page * 4096) == phys
        assert system.statistics().disk_read_bytes < 2 * 512 * 1024
        for f in files:
            await f.close()


async def test_writes_are_visible_to_other_processes_through_the_same_frames(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/data.bin": bytes(64 * 1024)})
    async with microkernel.boot(image=image, memory="64M") as system:
        writer, reader = await system.spawn("w"), await system.spawn("r")
        fw = await writer.open("/data.bin", "r+b")
        fr = await reader.open("/data.bin", "rb")
        before = bytes(await fr.view(0, 16))
        assert before == bytes(16)
        fw.seek(5)
        await fw.write(b"MICROKERNEL")
        calls = reader.syscalls
        fr.seek(5)
        assert await fr.read(11) == b"MICROKERNEL"  # already mapped: same frame, no syscall
        assert reader.syscalls == calls
        await fw.close()
        await fr.close()
    fsck_ok(image)
    assert mtype(image, "/data.bin")[5:16] == b"MICROKERNEL"


async def test_fsync_then_unmount_gives_a_clean_image(make_image: ImageFactory) -> None:
    image = make_image({})
    payload = RNG.randbytes(700_001)
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("writer")
        await proc.mkdir("/out/deep", parents=True)
        async with await proc.open("/out/deep/Long File Name.dat", "wb") as f:
            for i in range(0, len(payload), 65536):
                await f.write(payload[i : i + 65536])
            await f.fsync()
        async with await proc.open("/out/appended.log", "ab") as f:
            for i in range(100):
                await f.write(f"line {i}\n".encode())
        await proc.rename("/out/appended.log", "/out/renamed.log")
        stats = system.statistics()
        assert stats.bytes_copied == 0
    fsck_ok(image)
    assert mtype(image, "/out/deep/Long File Name.dat") == payload
    assert mtype(image, "/out/renamed.log") == b"".join(f"line {i}\n".encode() for i in range(100))
    assert system.statistics().partial_sector_writes == 0


async def test_unaligned_volume_takes_the_copy_path_with_identical_results(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/big.bin": BIG}, aligned=False)
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("reader")
        assert not (await proc.statfs()).aligned
        async with await proc.open("/big.bin", "rb") as f:
            assert not f.zero_copy
            assert await f.read() == BIG
        assert system.statistics().bytes_copied >= len(BIG)
        async with await proc.open("/big.bin", "r+b") as f:
            f.seek(4093)
            await f.write(b"straddle")
            await f.fsync()
    fsck_ok(image)
    expected = BIG[:4093] + b"straddle" + BIG[4101:]
    assert hashlib.sha256(mtype(image, "/big.bin")).digest() == hashlib.sha256(expected).digest()


async def test_no_page_shows_bytes_past_eof_or_from_freed_clusters(
    make_image: ImageFactory,
) -> None:
    canary = b"\xca\xfe\xba\xbe" * (2 << 20 // 4)
    image = make_image({"/canary.bin": canary})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        await proc.unlink("/canary.bin")  # its clusters are free but still hold the canary
        sizes = [1, 4095, 4097, 10_000, 65_537]
        files = []
        for i, size in enumerate(sizes):
            f = await proc.open(f"/f{i}.bin", "w+b")
            await f.write(b"A" * size)
            await f.truncate(size + 5000)  # extend: new bytes must read as zero
            files.append((f, size))
        for f, size in files:
            data = bytes(await f.view(0))
            assert data == b"A" * size + bytes(5000)
            # Scan whole mapped pages, including the bytes past end of file.
            window = vfs_of(system).windows[f.handle]
            for page in sorted(window.mapped):
                raw = bytes(window.space.view(DATA_OFFSET + page * 4096, 4096))
                assert b"\xca\xfe" not in raw
                end = f.size - page * 4096
                if 0 <= end < 4096:
                    assert raw[end:] == bytes(4096 - end)
            await f.close()
    fsck_ok(image)


async def test_second_chance_evicts_untouched_parts_and_keeps_touched(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/a.bin": BIG[: 1 << 20]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/a.bin", "rb") as f:
            await f.view(0, 300_000)  # part 1
            f.seek(800_000)
            await f.read(10)  # part 2
            window = vfs_of(system).windows[f.handle]
            assert len(window.parts) == 2
            for _ in range(4):
                f.seek(10)
                await f.read(5)  # keep touching part 1 only
                vfs_of(system).pager.second_chance(window)
            positions = [part.position for _, part in iter_parts(window.space.view(0, 4096))]
            assert positions == [0]  # unlinked at once
            with anyio.fail_after(5):  # unmapped after two grace periods
                while window.space.is_mapped(DATA_OFFSET + 800_000, 1):
                    await anyio.sleep(0.01)
            f.seek(800_000)
            assert await f.read(10) == BIG[800_000:800_010]  # a miss maps it again


async def test_legacy_copying_syscalls_are_counted(make_image: ImageFactory) -> None:
    from servers.vfs.protocol import Data, Read, Write, Written

    image = make_image({"/x.bin": BIG[:100_000]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/x.bin", "r+b") as f:
            data: Data = await proc.syscall(Read(f.handle, 10, 50_000), Data)
            assert data.data == BIG[10:50_010]
            done: Written = await proc.syscall(Write(f.handle, 99_990, b"Z" * 20), Written)
            assert done.count == 20
            assert f.size == 100_010
        stats = system.statistics()
        assert stats.copies_by_reason == {"legacy-read": 50_000, "legacy-write": 20}
    assert mtype(image, "/x.bin")[-20:] == b"Z" * 20


async def test_errors_are_typed(make_image: ImageFactory) -> None:
    image = make_image({"/d/f.txt": b"x"})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        with pytest.raises(FileNotFoundError):
            await proc.open("/nope.txt", "rb")
        with pytest.raises(FileExistsError):
            await proc.mkdir("/d")
        with pytest.raises(OSError) as info:
            await proc.rmdir("/d")
        assert info.value.errno == errno.ENOTEMPTY
        with pytest.raises(FileExistsError):
            await proc.open("/d/f.txt", "xb")
        with pytest.raises(IsADirectoryError):
            await proc.open("/d", "rb")
        with pytest.raises(ValueError):
            await proc.open("/d/f.txt", "r")
        async with await proc.open("/d/f.txt", "rb") as f:
            with pytest.raises(OSError) as info:
                await f.write(b"no")
            assert info.value.errno == errno.EBADF


async def test_unlink_while_open_keeps_data_until_close(make_image: ImageFactory) -> None:
    image = make_image({"/tmp.bin": SMALL})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        f = await proc.open("/tmp.bin", "rb")
        await proc.unlink("/tmp.bin")
        assert not await proc.exists("/tmp.bin")
        assert await f.read() == SMALL
        await f.close()
    fsck_ok(image)


async def test_read_larger_than_the_cache(make_image: ImageFactory) -> None:
    big = RNG.randbytes(12 << 20)
    image = make_image({"/huge.bin": big})
    cfg = SystemConfig(
        memory="16M",
        devices=[DeviceConfig(image=str(image), driver="nvme")],
        cache=CacheConfig(pages=1024),  # 4 MiB of cache for a 12 MiB file
    )
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("p")
        digest = hashlib.sha256()
        async with await proc.open("/huge.bin", "rb") as f:
            while chunk := await f.read(1 << 20):
                digest.update(chunk)
        assert digest.digest() == hashlib.sha256(big).digest()
        assert system.statistics().cache_evictions > 0


async def test_a_view_kept_after_close_reads_zeros_and_never_faults(make_image: ImageFactory) -> None:
    image = make_image({"/v.bin": SMALL})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/v.bin", "rb") as f:
            view = await f.view(0)
            assert bytes(view) == SMALL
        assert bytes(view) == bytes(len(SMALL))  # the frames went back; the view sees zeros
        async with await proc.open("/v.bin", "rb") as f:
            assert await f.read() == SMALL
    assert bytes(view[:10]) == bytes(10)


async def test_misses_run_second_chance_once_the_filemap_fills(make_image: ImageFactory) -> None:
    from servers.vfs.protocol import CachePart, PartReady

    image = make_image({"/parts.bin": BIG[: 1 << 20]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/parts.bin", "rb") as f:
            window = vfs_of(system).windows[f.handle]
            for page in range(0, 256, 2):  # 128 one-page parts, never touched
                await proc.syscall(CachePart(f.handle, page * 4096, 1), PartReady)
            assert window.writer.count < 128
            f.seek(0)
            assert await f.read() == BIG[: 1 << 20]


async def test_extension_larger_than_the_cache_and_a_nearly_full_disk(
    make_image: ImageFactory,
) -> None:
    image = make_image({}, sectors=40000)  # 20 MiB FAT16 volume
    cfg = SystemConfig(
        memory="16M",
        devices=[DeviceConfig(image=str(image), driver="nvme")],
        cache=CacheConfig(pages=512),  # 2 MiB of cache
    )
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("p")
        free = (await proc.statfs()).free_clusters * 4096
        async with await proc.open("/big.bin", "wb") as f:
            await f.truncate(6 << 20)  # three times the cache, zero filled through it
            assert f.size == 6 << 20
        async with await proc.open("/fill.bin", "wb") as f:
            chunk = b"F" * 65536
            left = free - (6 << 20) - 4096
            while left > 0:  # no room for the usual reservation slack near the end
                left -= await f.write(chunk[: min(len(chunk), left)])
        with pytest.raises(OSError) as info:
            async with await proc.open("/more.bin", "wb") as f:
                await f.write(b"x" * (1 << 20))
        assert info.value.errno == errno.ENOSPC
    fsck_ok(image)
    assert mtype(image, "/big.bin") == bytes(6 << 20)


async def test_set_times_like_utime(make_image: ImageFactory) -> None:
    image = make_image({"/t.txt": b"times"})
    stamp = 1_600_000_000.0  # 2020-09-13, an even number of DOS seconds
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/t.txt", "r+b") as f:
            await f.write(b"T")
            await f.set_times(stamp)
        assert abs((await proc.stat("/t.txt")).mtime - stamp) <= 2
    fsck_ok(image)
