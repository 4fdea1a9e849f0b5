"""Warm re-reads and small files: a closed file's pages stay known, an open maps up front.

docs/architecture.md §6 (Warm pages): after the last close the kernel file
driver keeps a file's clean cache pages, pinned for itself, in an LRU keyed by
(file system, file id); a new open of that file maps them before it replies,
with no message to the cache. A GiveBack takes them back first. The rules that
keep them exact (identity, size and native facts must match; an unlink or a
rename onto the name drops them; the tail past the end is zeroed) are tested here.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import microkernel
from clients.file import File
from microkernel.boot import System
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.protocol import Ok
from servers.fs.protocol import FsFsync
from servers.vfs.abi import DATA_OFFSET, PAGE_SIZE
from servers.vfs.core import RetainedFile
from servers.vfs.server import VfsServer
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype

pytestmark = pytest.mark.anyio

BIG = bytes(range(256)) * 4096 * 2  # 2 MiB
SMALL = b"small file " * 600  # 6600 bytes: two pages, the second partly past the end


def vfs_of(system: System) -> VfsServer:
    vfs = system.server("vfs")
    assert isinstance(vfs, VfsServer)
    return vfs


def retained(system: System, name: str) -> RetainedFile | None:
    records = [r for r in vfs_of(system).retained.records.values() if r.name == name]
    assert len(records) <= 1
    return records[0] if records else None


def counts(system: System) -> dict[str, int]:
    c = system.counters
    return {
        "syscalls": c.syscalls,
        "CachePart": c.syscalls_by_type["CachePart"],
        **{m: c.messages_by_type[m] for m in ("MapRange", "CacheRead", "SectorsReady", "Release")},
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


async def settle(system: System) -> None:
    """A read-only close is posted: wait until the kernel file driver has done it."""
    vfs = vfs_of(system)
    with anyio.fail_after(10):
        while vfs._retiring or any(w.file.key in vfs.files for w in vfs.windows.values()):
            await anyio.sleep(0.001)


async def test_a_reopened_file_maps_its_kept_pages_without_asking_the_cache(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/big.bin": BIG})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        assert await proc.read_file("/big.bin") == BIG
        await settle(system)
        record = retained(system, "big.bin")
        assert record is not None and sorted(record.pages) == list(range(len(BIG) // PAGE_SIZE))
        before = counts(system)
        async with await proc.open("/big.bin", "rb") as f:
            buf = bytearray(len(BIG))
            assert await f.readinto(buf) == len(BIG) and buf == BIG
        await settle(system)
        moved = delta(counts(system), before)
        assert moved == {  # open and close only: no miss, nothing to or from the cache
            "syscalls": 2, "CachePart": 0, "MapRange": 0, "CacheRead": 0, "SectorsReady": 0,
            "Release": 0,
        }
        assert retained(system, "big.bin") is not None  # kept again after this close
        cache = system.server("cache")
        assert cache.cache_stats().pages_pinned == vfs_of(system).retained.pages  # type: ignore[attr-defined]


async def test_kept_pages_are_mapped_one_part_per_run(make_image: ImageFactory) -> None:
    image = make_image({"/big.bin": BIG})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        assert await proc.read_file("/big.bin") == BIG
        await settle(system)
        async with await proc.open("/big.bin", "rb") as f:
            window = vfs_of(system).windows[f.handle]
            assert list(window.parts.values()) == [(0, len(BIG) // PAGE_SIZE)]  # one part
            assert window.writer.count == 1


async def test_a_small_file_costs_an_open_and_a_close(make_image: ImageFactory) -> None:
    image = make_image({f"/s{i}.txt": SMALL + bytes([i]) for i in range(5)})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        before = counts(system)
        for i in range(5):
            async with await proc.open(f"/s{i}.txt", "rb") as f:
                assert await f.read() == SMALL + bytes([i])
        await settle(system)
        moved = delta(counts(system), before)
        assert moved["syscalls"] == 10 and moved["CachePart"] == 0  # the open fetched it
        # one fetch per file, made by its open straight from the cache: the file system's
        # answer to the open named the file's extents (FsOpened.extents), no MapRange
        assert moved["CacheRead"] == moved["SectorsReady"] == 5 and moved["MapRange"] == 0


async def test_kept_pages_are_the_files_current_bytes_after_a_write_through_another_handle(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/w.bin": BIG})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        assert await proc.read_file("/w.bin") == BIG
        await settle(system)
        async with await proc.open("/w.bin", "r+b") as f:
            f.seek(5000)
            await f.write(b"NEW BYTES")
        expected = BIG[:5000] + b"NEW BYTES" + BIG[5009:]
        assert retained(system, "w.bin") is not None  # kept after a written file's close, too
        before = counts(system)
        other = await system.spawn("q")
        assert await other.read_file("/w.bin") == expected
        await settle(system)
        moved = delta(counts(system), before)
        assert moved["CachePart"] == moved["MapRange"] == moved["CacheRead"] == 0
    assert mtype(image, "/w.bin") == expected
    fsck_ok(image)


async def test_truncate_unlink_and_rename_never_show_the_old_pages(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/t.bin": BIG, "/u.bin": BIG, "/r.bin": BIG, "/src.bin": SMALL})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        for name in ("t.bin", "u.bin", "r.bin"):
            assert await proc.read_file(f"/{name}") == BIG
        await settle(system)
        assert all(retained(system, n) is not None for n in ("t.bin", "u.bin", "r.bin"))
        await proc.write_file("/t.bin", b"short")  # truncated by the open ("wb")
        assert await proc.read_file("/t.bin") == b"short"
        await proc.unlink("/u.bin")
        assert retained(system, "u.bin") is None  # dropped before the clusters were freed
        await proc.write_file("/u.bin", b"a new file at the old name")
        assert await proc.read_file("/u.bin") == b"a new file at the old name"
        await proc.rename("/src.bin", "/r.bin")
        assert retained(system, "r.bin") is None
        assert await proc.read_file("/r.bin") == SMALL
    fsck_ok(image)


async def test_the_tail_past_the_end_of_a_kept_page_reads_zeros(make_image: ImageFactory) -> None:
    image = make_image({})
    async with microkernel.boot(image=image, memory="64M") as system:
        writer = await system.spawn("w")
        async with await writer.open("/tail.bin", "wb") as f:
            await f.write(b"x" * 9000)
            await f.truncate(5000)  # the page's bytes 5000..8999 were data once
        await settle(system)
        reader = await system.spawn("r")
        async with await reader.open("/tail.bin", "rb") as f:
            assert f.size == 5000
            window = vfs_of(system).windows[f.handle]
            assert 1 in window.mapped  # mapped at open
            past = f._space.raw_view(DATA_OFFSET + 5000, PAGE_SIZE * 2 - 5000)
            assert bytes(past) == bytes(len(past))
            assert await f.read() == b"x" * 5000


async def test_a_give_back_releases_kept_pages_first_and_promptly(tmp_path: Path) -> None:
    image = tmp_path / "tiny.img"
    microkernel.mkfs(image, size=16 * 1024 * 1024, fat=16)
    first, second = BIG[: 600 * 1024], bytes(reversed(BIG))[: 700 * 1024]
    cfg = SystemConfig(
        memory="16M",
        devices=[DeviceConfig(image=str(image), driver="nvme")],
        cache=CacheConfig(pages=256),  # 1 MiB: the two files do not fit together
    )
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("p")
        await proc.write_file("/one.bin", first)
        await proc.write_file("/two.bin", second)
        assert await proc.read_file("/one.bin") == first
        await settle(system)
        assert retained(system, "two.bin") is None  # pushed out while one.bin was read
        assert retained(system, "one.bin") is not None
        asked = system.counters.messages_by_type["GiveBack"]
        assert await proc.read_file("/two.bin") == second  # needs one.bin's frames back
        await settle(system)
        assert system.counters.messages_by_type["GiveBack"] > asked
        assert retained(system, "one.bin") is None
        assert retained(system, "two.bin") is not None
        assert await proc.read_file("/one.bin") == first  # cold again, still exact
        await settle(system)
        vfs = vfs_of(system)
        assert vfs.retained.pages == sum(len(r.pages) for r in vfs.retained.records.values())
        cache = system.server("cache")
        # The FAT server pins metadata pages waiting for their write order: write them out.
        await system.kernel.call("fat0", FsFsync(0), Ok)
        assert cache.cache_stats().pages_pinned == vfs.retained.pages  # type: ignore[attr-defined]
        stats = system.statistics()
        assert stats.cache_evictions > 0
    assert mtype(image, "/two.bin") == second


async def test_kept_pages_belong_to_no_process_and_reach_only_openers(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/secret.bin": b"S" * 20000, "/mine.bin": b"M" * 20000})
    async with microkernel.boot(image=image, memory="64M") as system:
        owner = await system.spawn("owner")
        assert await owner.read_file("/secret.bin") == b"S" * 20000
        await settle(system)
        record = retained(system, "secret.bin")
        assert record is not None
        frames = {fp.phys for fp in record.pages.values()}
        assert {system.memory.owner_of(p) for p in frames} == {"cache"}
        assert system.memory.frames_of(owner.kernel.port) == []
        other = await system.spawn("other")
        f: File = await other.open("/mine.bin", "rb")
        window = vfs_of(system).windows[f.handle]
        assert not frames & set(window.space.mapped_frames().values())
        assert await f.read() == b"M" * 20000
        await f.close()
