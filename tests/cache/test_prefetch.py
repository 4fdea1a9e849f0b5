"""CachePrefetch: read-ahead for nobody in particular (docs/architecture.md §4).

Absent pages come in with one driver command per run that follows on the
disk, unpinned and clean; present pages are left alone; a later CacheRead is a
hit or joins the read in flight; the request is bounded and never makes the
cache evict; a failed read leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from drivers.protocol import InjectFault
from microkernel.protocol import Ok
from servers.cache.protocol import PREFETCH_MAX_PAGES, CacheFailed, CachePrefetch, Extent
from tests.cache.harness import GUARD_S, System, booted

pytestmark = pytest.mark.anyio


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (guarded against hangs, not timed)."""
    with anyio.fail_after(GUARD_S):
        while not condition():
            await anyio.sleep(0.001)


async def prefetch(s: System, *extents: tuple[int, int]) -> None:
    """A call, so the reply says the pages are in (the file system only ever sends it)."""
    await s.call(CachePrefetch("disk", [Extent(lba, n) for lba, n in extents]), Ok)


def present(s: System) -> list[int]:
    return sorted(s.cache.core.tables["disk"])


async def test_prefetched_pages_come_in_unpinned_and_a_later_read_is_a_hit(
    tmp_path: Path,
) -> None:
    async with booted(tmp_path) as s:
        await prefetch(s, (0, 40), (40, 24))  # two extents that follow on the disk: one command
        assert [(r.lba, r.count) for r in s.reads] == [(0, 64)]
        assert present(s) == list(range(0, 64, 8))
        stats = s.cache.cache_stats()
        assert stats.pages_pinned == 0 and stats.pages_dirty == 0 and stats.misses == 8
        ready = await s.read(16, 16)  # what an open asks for afterwards
        assert len(s.reads) == 1 and s.cache.cache_stats().hits == 2
        assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)


async def test_present_pages_are_left_alone_and_gaps_are_read(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        ready = await s.read(16, 8)  # page 16, pinned once for the holder
        await prefetch(s, (0, 48))
        assert [(r.lba, r.count) for r in s.reads[1:]] == [(0, 16), (24, 24)]
        page = s.cache.core.page("disk", 16)
        assert page is not None and page.holders == {"vfs": 1}  # no pin added, none taken
        await s.holder.release("disk", [p.lba for p in ready.pages])
        await wait_until(lambda: s.cache.cache_stats().pages_pinned == 0)


async def test_a_read_arriving_meanwhile_joins_the_prefetch(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        await s.fs.call("disk", InjectFault(hang=True), Ok)
        await s.fs.send("cache", CachePrefetch("disk", [Extent(0, 64)]))
        await wait_until(lambda: len(s.reads) == 1)
        tag = await s.request(8, 8)
        await s.fs.call("disk", InjectFault(), Ok)
        ready = await s.holder.ready(tag)
        assert len(s.reads) == 1 and s.frame(ready.pages[0].phys) == s.expected_page(8)
        await wait_until(lambda: s.cache.cache_stats().pages_pinned == 1)  # the reader's only


async def test_a_prefetch_is_bounded_and_never_evicts(tmp_path: Path) -> None:
    async with booted(tmp_path, sectors=8192, capacity_pages=1024) as s:
        await prefetch(s, (0, 8192))  # 1024 pages asked for
        assert len(present(s)) == PREFETCH_MAX_PAGES
    async with booted(tmp_path, capacity_pages=64) as s:
        await s.read(0, 8 * 50)  # 50 of 64 frames, pinned: past the high-water mark
        await prefetch(s, (400, 8 * 60))
        stats = s.cache.cache_stats()
        # only the frames free above the high-water mark (15 %: 10 of 64) were taken
        assert stats.evictions == 0 and stats.pages_present == 64 - 10
        assert s.holder.give_backs == []  # nobody was asked to give pages back either


async def test_a_failed_prefetch_leaves_nothing_and_the_reader_meets_the_error(
    tmp_path: Path,
) -> None:
    async with booted(tmp_path) as s:
        await s.fs.call("disk", InjectFault(fail_ranges=[(10, 1)]), Ok)
        await prefetch(s, (0, 32))  # answered: nobody to tell
        assert present(s) == [] and s.cache.cache_stats().pages_pinned == 0
        result = await s.holder.result(await s.request(8, 8))
        assert isinstance(result, CacheFailed)
        await s.fs.call("disk", InjectFault(), Ok)
        assert (await s.read(8, 8)).pages  # the next read gets it from the disk
