"""The cache server against a real driver: coalescing, merging, failure, eviction, writeback."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from drivers.protocol import Flush, InjectFault, IoDone, Read, Segment
from drivers.recording import Recorder, RecordingRamDisk
from microkernel.memory import DMA32_LIMIT, PAGE_SIZE, Zone
from microkernel.protocol import Ok
from servers.cache.errors import CacheFull, NoSuchDevice
from servers.cache.protocol import (
    CacheFailed,
    CacheStats,
    FlushDevice,
    GetCacheStats,
    Invalidate,
    MarkDirty,
    PageSpan,
    Release,
    Writeback,
)
from tests.cache.harness import GUARD_S, CountingAhci, System, booted, sector_pattern

pytestmark = pytest.mark.anyio


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (guarded against hangs, not timed)."""
    with anyio.fail_after(GUARD_S):
        while not condition():
            await anyio.sleep(0.001)


async def faults(s: System, **kwargs: object) -> None:
    await s.fs.call("disk", InjectFault(**kwargs), Ok)  # type: ignore[arg-type]


def owned_frames(s: System) -> int:
    return s.memory.statistics().frames_by_owner.get("cache", 0)


# ---------------------------------------------------------------- reading
async def test_miss_then_hit_returns_the_disk_bytes(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        ready = await s.read(0, 64)
        assert [p.lba for p in ready.pages] == list(range(0, 64, 8))
        assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)
        again = await s.read(8, 16)
        assert [(p.lba, p.phys) for p in again.pages] == [(p.lba, p.phys) for p in ready.pages[1:3]]
        assert len(s.reads) == 1
        c = s.router.counters
        assert (c.cache_misses, c.cache_hits) == (8, 2)
        assert c.bytes_copied == 0  # the data went disk -> frame by DMA only


async def test_concurrent_requests_for_the_same_pages_cause_one_disk_read(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        await faults(s, latency_s=0.05)  # keeps the first read in flight; nothing is timed
        tags = [await s.request(0, 32) for _ in range(5)]
        results = [await s.holder.ready(tag) for tag in tags]
        assert len(s.reads) == 1
        assert all(r.pages == results[0].pages for r in results)
        stats = s.cache.cache_stats()
        assert stats.pages_pinned == 4 and s.cache.core.page("disk", 0).pins == 5  # type: ignore[union-attr]


async def test_contiguous_pages_are_merged_into_one_command(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        ready = await s.read(0, 128)  # 16 contiguous pages into one run of frames
        assert [(r.lba, r.count, len(r.sg)) for r in s.reads] == [(0, 128, 1)]
        assert [(r.lba, r.count) for r in ready.runs] == [(0, 16)]  # one record, not 16
        await s.read(256, 8)
        await s.read(192, 128)  # 192..319: page 256 is present, so two runs around it
        assert [(r.lba, r.count) for r in s.reads[2:]] == [(192, 64), (264, 56)]


async def test_runs_are_cut_at_the_drivers_limits(tmp_path: Path) -> None:
    async with booted(tmp_path, cache_options={"max_pages_per_command": 4}) as s:
        await s.read(0, 128)
        assert [(r.lba, r.count) for r in s.reads] == [(0, 32), (32, 32), (64, 32), (96, 32)]


async def test_wait_list_joins_pages_in_flight(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        await faults(s, hang=True)
        first = await s.request(0, 24)  # pages 0, 8, 16
        second = await s.request(8, 24)  # pages 8, 16 in flight + page 24
        await wait_until(lambda: len(s.reads) == 2)
        page = s.cache.core.page("disk", 16)
        assert page is not None and len(page.waiters) == 2
        assert not s.holder.results
        await faults(s)  # the disk answers again
        a, b = await s.holder.ready(first), await s.holder.ready(second)
        assert [(r.lba, r.count) for r in s.reads] == [(0, 24), (24, 8)]
        assert [p.lba for p in b.pages] == [8, 16, 24]
        assert a.pages[1:] == b.pages[:2]


async def test_failed_read_notifies_every_waiter_and_leaves_no_poisoned_page(
    tmp_path: Path,
) -> None:
    async with booted(tmp_path) as s:
        await faults(s, fail_ranges=[(10, 1)], latency_s=0.05)
        first = await s.request(0, 16)
        second = await s.request(8, 8)  # joins page 8 while it is in flight
        for tag in (first, second):
            failed = await s.holder.result(tag)
            assert isinstance(failed, CacheFailed) and failed.errno == errno.EIO
        assert len(s.reads) == 1
        assert s.cache.core.page("disk", 0) is None and s.cache.core.page("disk", 8) is None
        assert owned_frames(s) == 0 and s.cache.cache_stats().pages_pinned == 0
        await faults(s)
        ready = await s.read(0, 16)
        assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)


async def test_unknown_device_and_oversized_requests_are_typed_errors(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=8) as s:
        with pytest.raises(NoSuchDevice):
            await s.call(Invalidate("nope", [0]))
        with pytest.raises(CacheFull) as info:
            await s.map(0, 9 * 8)
        assert info.value.errno == errno.ENOMEM
        tag = await s.request(2000, 8)  # past the end of the 1024-sector disk
        failed = await s.holder.result(tag)
        assert isinstance(failed, CacheFailed) and failed.errno == errno.ERANGE


async def test_zero_fill_pages_are_not_read_from_disk(tmp_path: Path) -> None:
    """CacheRead (a file's reserved room): clean zeros, written only once marked dirty."""
    async with booted(tmp_path) as s:
        ready = await s.read(4, 24, zero_fill=True)  # page 0 and 24 partly, 8 and 16 wholly
        assert [(r.lba, r.count) for r in s.reads] == [(0, 8), (24, 8)]
        frames = {p.lba: s.frame(p.phys) for p in ready.pages}
        assert frames[8] == frames[16] == bytes(PAGE_SIZE)
        assert frames[0] == s.expected_page(0) and frames[24] == s.expected_page(24)
        assert s.cache.cache_stats().pages_dirty == 0  # clean: nothing written unless marked
        await s.call(Writeback("disk"))
        assert s.disk_sector(8) == sector_pattern(8, 512) == s.expected_page(8)[:512]
        await s.call(MarkDirty("disk", [16]))  # the holder stored into it: now it goes out
        await s.call(Writeback("disk"))
        assert s.disk_sector(16) == bytes(512) and s.disk_sector(8) == sector_pattern(8, 512)


async def test_zero_fill_of_a_cache_map_is_dirty(tmp_path: Path) -> None:
    """CacheMap (metadata, zero fills of the file system): the zeros must reach the disk."""
    async with booted(tmp_path) as s:
        await s.map(8, 16, zero_fill=True)
        assert s.reads == [] and s.cache.cache_stats().pages_dirty == 2
        await s.call(Writeback("disk"))
        assert s.disk_sector(8) == bytes(512) and s.disk_sector(16) == bytes(512)


# ------------------------------------------------------------- replacement
async def test_a_file_four_times_the_cache_reads_correctly(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=16) as s:
        for lba in range(0, 4 * 16 * 8, 32):
            ready = await s.read(lba, 32)
            assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)
            assert owned_frames(s) <= 16
            await s.holder.release("disk", [p.lba for p in ready.pages])
        assert s.router.counters.cache_evictions >= 48
        assert not s.holder.give_backs


async def test_freed_frames_come_back_as_one_run_per_command(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=16) as s:
        first = await s.read(0, 128)  # 16 pages: the whole cache
        await s.holder.release("disk", [p.lba for p in first.pages])
        await s.call(Invalidate("disk", [], [PageSpan(0, 16)]))  # all 16 frames freed
        again = await s.read(512, 128)  # the freed frames, recently freed first
        assert {p.phys for p in again.pages} == {p.phys for p in first.pages}
        assert [(r.count, len(r.sg)) for r in s.reads[1:]] == [(128, 1)]  # one run, one segment
        assert len(again.runs) == 1


async def test_pinned_pages_are_never_evicted(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=8) as s:
        pinned = await s.read(0, 32)  # four pages the holder keeps
        for lba in range(64, 64 + 40 * 16, 16):
            ready = await s.read(lba, 16)
            await s.holder.release("disk", [p.lba for p in ready.pages])
        for p in pinned.pages:
            page = s.cache.core.page("disk", p.lba)
            assert page is not None and page.phys == p.phys and page.pins == 1
            assert s.frame(p.phys) == s.expected_page(p.lba)
        assert s.router.counters.cache_evictions >= 70
        assert not s.holder.give_backs


async def test_dirty_pages_are_written_before_eviction(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=4) as s:
        (page,) = await s.map(0, 8)
        s.memory.view(page.phys, 8)[:] = b"MODIFIED"
        await s.fs.send("cache", MarkDirty("disk", [0]))
        await s.fs.send("cache", Release("disk", [0]))
        for lba in range(8, 8 + 64 * 8, 8):  # until the clock has had page 0 written and evicted
            ready = await s.read(lba, 8)
            await s.holder.release("disk", [p.lba for p in ready.pages])
            if s.cache.core.page("disk", 0) is None:
                break
        assert s.cache.core.page("disk", 0) is None
        assert [(w.lba, w.count) for w in s.writes] == [(0, 8)]
        assert s.disk_sector(0)[:8] == b"MODIFIED"
        (again,) = await s.map(0, 8)
        assert s.frame(again.phys)[:8] == b"MODIFIED"


async def test_give_back_is_asked_when_everything_is_pinned(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=4) as s:
        await s.read(0, 32)  # the holder pins the whole cache
        (page,) = await s.map(32, 8)
        assert len(s.holder.give_backs) == 1 and s.holder.give_backs[0].pages >= 1
        assert s.frame(page.phys) == s.expected_page(32)


async def test_no_frame_to_give_back_is_enomem(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=4) as s:
        s.holder.policy = "refuse"
        await s.read(0, 32)
        with pytest.raises(CacheFull):
            await s.map(32, 8)
        tag = await s.request(40, 8)
        failed = await s.holder.result(tag)
        assert isinstance(failed, CacheFailed) and failed.errno == errno.ENOMEM
        assert len(s.holder.give_backs) == 2
        assert owned_frames(s) == 4


async def test_invalidated_dirty_pages_are_not_written(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        await s.map(0, 8)
        await s.fs.send("cache", MarkDirty("disk", [0]))
        await s.fs.send("cache", Release("disk", [0]))
        await s.call(Invalidate("disk", [0]))
        await s.call(FlushDevice("disk"))
        assert not s.writes and s.cache.core.page("disk", 0) is None and owned_frames(s) == 0


# ---------------------------------------------------------------- writing
async def test_writeback_writes_whole_pages_merged_without_partial_sectors(
    tmp_path: Path,
) -> None:
    async with booted(tmp_path) as s:
        pages = await s.map(64, 128)
        for p in pages:
            s.memory.view(p.phys, 8)[:] = b"W%07d" % p.lba
        await s.fs.send("cache", MarkDirty("disk", [p.lba for p in pages]))
        await s.call(Writeback("disk"))
        assert [(w.lba, w.count, len(w.sg)) for w in s.writes] == [(64, 128, 1)]  # one frame run
        assert s.router.counters.partial_sector_writes == 0
        assert all(s.disk_sector(p.lba)[:8] == b"W%07d" % p.lba for p in pages)
        stats: CacheStats = await s.call(GetCacheStats(), CacheStats)
        assert stats.pages_dirty == 0 and stats.write_bytes == 128 * 512
        await s.call(FlushDevice("disk"))
        assert len(s.writes) == 1  # nothing was dirty any more


async def test_periodic_writeback(tmp_path: Path) -> None:
    async with booted(tmp_path, cache_options={"writeback_interval": 0.01}) as s:
        (page,) = await s.map(0, 8)
        s.memory.view(page.phys, 4)[:] = b"TICK"
        await s.fs.send("cache", MarkDirty("disk", [0]))
        await wait_until(lambda: bool(s.writes) and not s.cache.core.dirty_pages("disk"))
        assert s.disk_sector(0)[:4] == b"TICK"


async def test_shutdown_flushes_dirty_pages(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        (page,) = await s.map(8, 8)
        s.memory.view(page.phys, 4)[:] = b"BYE!"
        await s.call(MarkDirty("disk", [8]))
        await s.cache.stop()
        assert s.disk_sector(8)[:4] == b"BYE!"


# --------------------------------------------------------- geometry edges
async def test_alignment_offset_head_and_tail_pages(tmp_path: Path) -> None:
    options = {"alignment_offset": 1}
    async with booted(tmp_path, sectors=1000, driver_options=options) as s:
        ready = await s.read(0, 10)
        assert [p.lba for p in ready.pages] == [-7, 1, 9]
        assert [(r.lba, r.count) for r in s.reads] == [(0, 17)]
        # one segment from the head page's only on-disk sector through the run's frames
        assert s.reads[0].sg == [Segment(ready.pages[0].phys + 7 * 512, 17 * 512)]
        assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)
        tail = await s.read(995, 5)
        assert [p.lba for p in tail.pages] == [993]
        assert s.frame(tail.pages[0].phys) == s.expected_page(993)  # zeros past the end
        head = ready.pages[0]
        s.memory.view(head.phys + 7 * 512, 4)[:] = b"HEAD"
        s.memory.view(ready.pages[1].phys, 4)[:] = b"ALGN"
        await s.fs.send("cache", MarkDirty("disk", [-7, 1]))
        await s.call(Writeback("disk"))
        assert [(w.lba, w.count) for w in s.writes] == [(0, 9)]
        assert s.disk_sector(0)[:4] == b"HEAD" and s.disk_sector(1)[:4] == b"ALGN"


async def test_4k_logical_sectors(tmp_path: Path) -> None:
    async with booted(tmp_path, sectors=64, sector_size=4096) as s:
        ready = await s.read(2, 3)
        assert [p.lba for p in ready.pages] == [2, 3, 4]
        assert [(r.lba, r.count) for r in s.reads] == [(2, 3)]
        assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)


async def test_32_bit_controller_gets_low_frames_and_never_bounces(tmp_path: Path) -> None:
    async with booted(
        tmp_path, driver=CountingAhci, driver_options={"s64a": False}, memory_size=4 << 20
    ) as s:
        ready = await s.read(0, 64)
        assert all(p.phys < DMA32_LIMIT for p in ready.pages)
        for p in ready.pages:
            s.memory.view(p.phys, 1)[:] = b"x"
        await s.fs.send("cache", MarkDirty("disk", [p.lba for p in ready.pages]))
        await s.call(Writeback("disk"))
        assert s.router.counters.dma_bounce_bytes == 0
        # The driver does bounce when handed a high frame directly: the cache is why it did not.
        (high,) = s.memory.alloc("test", 1, Zone.HIGH)
        await s.fs.call("disk", Read(0, 8, [Segment(high, PAGE_SIZE)]), IoDone)
        assert s.router.counters.dma_bounce_bytes == PAGE_SIZE
        s.memory.release([high])


# ----------------------------------------------------------- every driver
@pytest.mark.parametrize("name", ["ramdisk", "nvme", "ahci", "ahci32", "ide-dma", "ide-pio"])
async def test_every_driver_through_the_cache(tmp_path: Path, name: str) -> None:
    """Edge pages (sub-page segments), eviction and merged writes on each controller model."""
    from drivers.registry import load_driver

    options = {"alignment_offset": 3}
    async with booted(
        tmp_path, sectors=203, capacity_pages=8, driver=load_driver(name), driver_options=options
    ) as s:
        for lba in range(0, 203, 24):
            ready = await s.read(lba, min(24, 203 - lba))
            assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)
            await s.holder.release("disk", [p.lba for p in ready.pages])
        pages = await s.map(0, 40)  # head page -5, then 3, 11, 19, 27, 35
        assert [p.lba for p in pages] == [-5, 3, 11, 19, 27, 35]
        for p in pages[1:]:
            s.memory.view(p.phys, 4)[:] = b"DRV!"
        await s.call(MarkDirty("disk", [p.lba for p in pages[1:]]))
        await s.call(FlushDevice("disk"))
        assert all(s.disk_sector(p.lba)[:4] == b"DRV!" for p in pages[1:])
        assert s.router.counters.partial_sector_writes == 0
        assert s.router.counters.dma_bounce_bytes == 0


# ------------------------------------------------------------- a busy cache
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_readers_and_writers_keep_every_invariant(
    tmp_path: Path, seed: int
) -> None:
    """Readers and a writer race over a cache a quarter of the disk; nothing leaks or corrupts."""
    import random

    rng = random.Random(seed)
    written: dict[int, bytes] = {}
    async with booted(tmp_path, sectors=512, capacity_pages=16) as s:

        async def reader(turns: int) -> None:
            for _ in range(turns):
                lba = rng.randrange(64, 512 - 32)
                pages = await s.map(lba, rng.randrange(1, 25))
                for p in pages:
                    assert s.frame(p.phys) == s.expected_page(p.lba)
                assert owned_frames(s) <= 16
                await s.fs.send("cache", Release("disk", [p.lba for p in pages]))

        async def writer(turns: int) -> None:
            for turn in range(turns):
                lba = rng.randrange(0, 64, 8)
                (page,) = await s.map(lba, 8)
                stamp = b"%04d%04d" % (lba, turn)
                s.memory.view(page.phys, 8)[:] = stamp
                written[lba] = stamp
                await s.fs.send("cache", MarkDirty("disk", [lba]))
                await s.fs.send("cache", Release("disk", [lba]))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(reader, 40)
            tg.start_soon(writer, 40)
        await s.call(FlushDevice("disk"))
        stats = s.cache.cache_stats()
        assert stats.pages_pinned == 0 and stats.pages_dirty == 0
        assert all(s.disk_sector(lba)[:8] == stamp for lba, stamp in written.items())
        assert s.router.counters.cache_evictions > 0
        assert not s.holder.give_backs


async def test_a_crash_fails_pending_reads_and_the_cache_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with booted(tmp_path) as s:
        await faults(s, hang=True)
        tag = await s.request(0, 16)
        await wait_until(lambda: len(s.reads) == 1)

        def bug() -> None:
            raise ZeroDivisionError("a bug in the cache")

        monkeypatch.setattr(s.cache.core, "census", bug)
        with pytest.raises(OSError):
            await s.call(GetCacheStats())
        monkeypatch.undo()
        failed = await s.holder.result(tag)
        assert isinstance(failed, CacheFailed) and failed.errno == errno.EIO
        assert len(s.cache.quarantined) == 2  # the hung read may still DMA into its frames
        await faults(s)
        ready = await s.read(0, 16)
        assert all(s.frame(p.phys) == s.expected_page(p.lba) for p in ready.pages)
        assert s.cache.statistics().crashes == 1


# ------------------------------------------------------------- barriers
async def test_writeback_with_flush_is_a_barrier_for_exactly_the_named_pages(
    tmp_path: Path,
) -> None:
    async with booted(tmp_path, driver=RecordingRamDisk) as s:
        assert isinstance(s.driver, Recorder)
        log = s.driver.write_log
        for lba in (0, 64):
            pages = await s.map(lba, 8, zero_fill=True)
            await s.call(MarkDirty("disk", [p.lba for p in pages]))
            await s.call(Release("disk", [p.lba for p in pages]))
        await s.call(Writeback("disk", [0], flush=True))
        assert [(e.offset, e.is_flush) for e in log.entries] == [(0, False), (0, True)]
        assert s.cache.cache_stats().pages_dirty == 1  # page 64 waits for its own turn
        await s.call(Writeback("disk", [64]))
        assert [(e.offset, e.is_flush) for e in log.entries][2:] == [(64 * 512, False)]


async def test_a_flush_with_no_write_since_the_last_one_reaches_no_device(tmp_path: Path) -> None:
    """An fsync's last group is flushed; its FlushDevice then has nothing to add."""
    async with booted(tmp_path) as s:

        def flushes() -> int:
            return s.router.counters.messages_by_type["Flush"]

        await s.call(FlushDevice("disk"))
        first = flushes()
        assert first >= 1  # the first one goes out whatever came before
        await s.call(FlushDevice("disk"))
        await s.call(Writeback("disk", [], flush=True))
        assert flushes() == first
        page = (await s.map(0, 8))[0]
        s.memory.view(page.phys, 4)[:] = b"\xab" * 4
        await s.call(MarkDirty("disk", [0]))
        await s.call(Writeback("disk", [0], flush=True))  # a write since: flushed
        assert flushes() == first + 1 and s.disk_sector(0)[:4] == b"\xab" * 4


async def test_a_flush_asked_while_one_is_in_flight_returns_only_after_it(tmp_path: Path) -> None:
    """The skipped flush (nothing written since one was sent) must not answer before the
    one in flight is done: its caller (an fsync) takes the answer as "durable"."""
    async with booted(tmp_path) as s:
        gate, entered = anyio.Event(), anyio.Event()
        command = s.cache._command

        async def slow_flush(device: object, msg: object) -> object:
            if isinstance(msg, Flush):
                entered.set()
                await gate.wait()
            return await command(device, msg)  # type: ignore[arg-type]

        s.cache._command = slow_flush  # type: ignore[method-assign,assignment]
        answered: list[str] = []

        async def flush(who: str) -> None:
            await s.call(FlushDevice("disk"))
            answered.append(who)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush, "first")
            await entered.wait()
            tg.start_soon(flush, "second")
            await anyio.wait_all_tasks_blocked()
            early = list(answered)
            gate.set()
        assert early == []  # the second waited for the first's flush
        assert sorted(answered) == ["first", "second"]


async def test_mark_dirty_can_release_the_senders_pins_and_only_its_own(tmp_path: Path) -> None:
    """``MarkDirty(release=)`` is a Release in the same message: the sender's pins go, a pin
    it does not hold is refused and counted (as for Release), and the marking stands."""
    async with booted(tmp_path) as s:
        await s.map(0, 8)  # page 0, pinned once for the file system
        await s.read(8, 8)  # page 8, pinned for the holder (the VFS stand-in), not for us
        assert s.cache.cache_stats().pages_pinned == 2
        await s.call(MarkDirty("disk", [0], release=[PageSpan(0, 1)]))
        stats = s.cache.cache_stats()
        assert stats.pages_pinned == 1 and stats.pages_dirty == 1 and stats.pins_refused == 0
        await s.call(MarkDirty("disk", [8], release=[PageSpan(8, 1)]))  # not ours: refused
        stats = s.cache.cache_stats()
        assert stats.pages_pinned == 1 and stats.pins_refused == 1 and stats.pages_dirty == 2
