"""Sequential read-ahead in the kernel file driver.

A miss that continues where the handle's previous part ended (or that asks
for more than one part holds) also starts the fetch of the next part, behind
its own; the next miss joins that fetch (or finds its pages) instead of
waiting for a new one. A read at a random place reads nothing ahead.
"""

from __future__ import annotations

import random

import pytest

import microkernel
from clients.file import File
from microkernel.boot import System
from servers.vfs.core import CentralFile
from servers.vfs.server import VfsServer
from tests.e2e.conftest import ImageFactory

PAGE = 4096
DATA = random.Random(12).randbytes(1 << 20)


def vfs_of(system: System) -> VfsServer:
    vfs = system.server("vfs")
    assert isinstance(vfs, VfsServer)
    return vfs


def central(system: System, f: File) -> CentralFile:
    return vfs_of(system).windows[f.handle].file


async def fetches_done(system: System) -> None:
    """Wait for every fetch in flight (read-ahead is waited for by nobody else)."""
    for fetch in list(vfs_of(system).pager.fetches.values()):
        await fetch.done.wait()


@pytest.mark.anyio
async def test_a_sequential_miss_fetches_the_next_part_ahead(make_image: ImageFactory) -> None:
    image = make_image({"/d.bin": DATA})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/d.bin", "rb") as f:
            assert await f.read(PAGE) == DATA[:PAGE]  # first miss: part 0..64 pages, no more
            await fetches_done(system)
            cfile = central(system, f)
            assert max(cfile.pages) < 64
            f.seek(64 * PAGE)
            assert await f.read(PAGE) == DATA[64 * PAGE : 65 * PAGE]  # sequential: 64..192
            await fetches_done(system)
            assert set(range(192, 256)) <= set(cfile.pages)  # the next part, up to the end
            window = vfs_of(system).windows[f.handle]
            assert not window.mapped & set(range(192, 256))  # fetched, not yet mapped
            maps = system.statistics().messages_by_type.get("MapRange", 0)
            f.seek(192 * PAGE)
            assert await f.read() == DATA[192 * PAGE :]
            assert system.statistics().messages_by_type.get("MapRange", 0) == maps


@pytest.mark.anyio
async def test_one_big_readinto_is_read_ahead_and_exact(make_image: ImageFactory) -> None:
    image = make_image({"/d.bin": DATA})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        sink = bytearray(len(DATA))
        async with await proc.open("/d.bin", "rb") as f:
            assert await f.readinto(sink) == len(DATA)
            await fetches_done(system)
        assert sink == DATA


@pytest.mark.anyio
async def test_a_random_small_read_reads_nothing_ahead(make_image: ImageFactory) -> None:
    image = make_image({"/d.bin": DATA})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/d.bin", "rb") as f:
            f.seek(100 * PAGE)
            assert await f.read(8) == DATA[100 * PAGE : 100 * PAGE + 8]
            await fetches_done(system)
            assert max(central(system, f).pages) < 100 + 64


@pytest.mark.anyio
async def test_a_reader_of_more_than_the_cache_drops_behind_instead_of_a_give_back(
    make_image: ImageFactory,
) -> None:
    """A sequential reader of three times the cache releases its parts behind it as
    the cache fills (after their unmaps), so the cache makes room by evicting those
    unpinned pages: no GiveBack round, read-ahead goes on, the bytes are exact."""
    data = random.Random(13).randbytes(24 << 20)
    image = make_image({"/big.bin": data}, sectors=4 * 65536)
    async with microkernel.boot(image=image, memory="16M") as system:
        proc = await system.spawn("p")
        vfs = vfs_of(system)
        capacity = system.memory.quota("cache")
        assert capacity is not None and capacity * PAGE * 3 <= len(data)
        async with await proc.open("/big.bin", "rb") as f:
            cfile = central(system, f)
            got = bytearray()
            most = 0
            while chunk := await f.read(1 << 20):
                got += chunk
                most = max(most, len(cfile.pages))
        assert got == data
        stats = system.statistics().messages_by_type
        assert stats.get("GiveBack", 0) == 0
        assert most <= capacity  # never more pinned than the cache holds
        assert vfs.pager.fetches == {} or all(f.done.is_set() for f in vfs.pager.fetches.values())


@pytest.mark.anyio
async def test_a_read_leaves_runs_not_page_records(make_image: ImageFactory) -> None:
    """The kernel file driver keeps a file's pages as runs: a whole read of an aligned
    file is a handful of runs (one per delivered frame run at most), no per-page
    record, a few bytes of heap per page."""
    image = make_image({"/d.bin": DATA})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/d.bin", "rb") as f:
            sink = bytearray(len(DATA))
            assert await f.readinto(sink) == len(DATA) and sink == DATA
            await fetches_done(system)
            table = central(system, f).pages
            assert len(table) == len(DATA) // PAGE and not table.copies
            assert len(table.first) <= 8
            assert table.heap_bytes() / len(table) < 8
