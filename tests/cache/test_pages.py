"""The pure page-state core: transition tables, runs, loads, pins, failure, second chance."""

from __future__ import annotations

import errno
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.protocol import Geometry
from servers.cache.errors import IllegalTransition, UnknownPage
from servers.cache.geometry import PageGeometry
from servers.cache.pages import (
    DIRTY,
    EVENT_TABLES,
    ILLEGAL,
    REFERENCED,
    STATE_MASK,
    TRANSITIONS,
    Event,
    PageCache,
    RunTable,
    State,
    Sweep,
    fire,
    merge_runs,
    page_runs,
)

FRAME = 0x100000


def cache(total: int = 1000) -> PageCache:
    core = PageCache()
    grid = PageGeometry.from_geometry(Geometry("t", 512, 4096, 0, total, 64, 1 << 20, 1, 256))
    core.add_device("d", grid)
    return core


def frames(n: int, base: int = FRAME) -> list[int]:
    return [base + i * 4096 for i in range(n)]


def test_every_state_event_pair_not_in_the_table_is_a_typed_error() -> None:
    for state in State:
        for event in Event:
            for flags in (0, DIRTY, REFERENCED | DIRTY):
                states = bytearray([state | flags])
                if (state, event) in TRANSITIONS:
                    fire(states, 0, 1, event, 0)
                    assert states[0] & STATE_MASK == TRANSITIONS[(state, event)]
                    assert states[0] & ~STATE_MASK == flags  # flags ride along
                else:
                    assert EVENT_TABLES[event][state | flags] == ILLEGAL
                    with pytest.raises(IllegalTransition):
                        fire(states, 0, 1, event, 0)
                    assert states[0] == state | flags  # nothing changed


def test_a_run_fires_all_or_nothing() -> None:
    states = bytearray([State.READING, State.READING, State.PRESENT])
    with pytest.raises(IllegalTransition):
        fire(states, 0, 3, Event.LOADED, 0)
    assert states == bytearray([State.READING, State.READING, State.PRESENT])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(1, 6)), max_size=30))
def test_run_table_matches_a_dict_of_pages(ops: list[tuple[bool, int, int]]) -> None:
    table = RunTable(8)
    model: dict[int, int] = {}
    frame = 0x100000
    for add, first, n in ops:
        pages = [(first + k) * 8 for k in range(n)]
        if add and not any(p in model for p in pages):
            table.add(pages[0], n, frame)
            model.update({p: frame + k * 4096 for k, p in enumerate(pages)})
            frame += n * 4096 + (4096 if first % 2 else 0)  # sometimes contiguous, sometimes not
        elif not add and all(p in model for p in pages):
            table.remove(pages[0], n)
            for p in pages:
                del model[p]
    assert len(table) == len(model)
    for p in range(0, 50 * 8, 8):
        assert table.find(p) == model.get(p, -1)
    covered = table.pieces(0, 50)
    assert sum(n for _, n, _ in covered) == 50
    for lba, n, phys in covered:
        for k in range(n):
            assert model.get(lba + 8 * k, -1) == (phys + 4096 * k if phys >= 0 else -1)


def test_contiguous_pages_are_one_run_and_one_load() -> None:
    core = cache()
    adm = core.admit_runs("d", [(0, 4)], set(), frames(4), max_pages=256)
    assert [ld.parts for ld in adm.to_read] == [((0, 4, FRAME),)]
    assert list(core.runs["d"]) == [(0, 4, FRAME)]
    split = core.admit_runs("d", [(32, 4)], set(), frames(4, 0x200000), max_pages=3)
    assert [(ld.lba, ld.count) for ld in split.to_read] == [(32, 3), (56, 1)]
    scattered = core.admit_runs("d", [(64, 2)], set(), [0x300000, 0x500000])
    # on the disk they follow each other: one load, one segment per frame run
    assert [ld.parts for ld in scattered.to_read] == [((64, 1, 0x300000), (72, 1, 0x500000))]


def test_second_request_joins_the_load_instead_of_reading_again() -> None:
    core = cache()
    first = core.admit("d", [0, 8], set(), frames(2))
    (load,) = first.to_read
    assert (load.lba, load.count) == (0, 2)
    second = core.admit("d", [8, 16], set(), frames(1, 0x200000))
    assert [(ld.lba, ld.count) for ld in second.to_read] == [(16, 1)]  # 8 is in flight already
    page8 = core.page("d", 8)
    assert page8 is not None and len(page8.waiters) == 2
    assert core.loaded(load).finished == [first.waiter]
    assert not second.waiter.done
    assert core.loaded(second.to_read[0]).finished == [second.waiter]
    assert page8.pins == 2 and page8.state is State.PRESENT
    assert core.refs(second.waiter) == [(8, 1, FRAME + 4096), (16, 1, 0x200000)]


def test_failed_read_frees_frames_fails_every_waiter_and_drops_its_pins() -> None:
    core = cache()
    present = core.admit("d", [0], set(), frames(1))
    core.loaded(present.to_read[0])
    a = core.admit("d", [0, 8, 16], set(), frames(2, 0x200000), max_pages=1)
    b = core.admit("d", [16], set(), [])
    load8, load16 = a.to_read
    out = core.load_failed(load16, errno.EIO, "medium error")
    assert set(out.finished) == {a.waiter, b.waiter}
    assert a.waiter.error == (errno.EIO, "medium error")
    assert out.free == [0x201000]
    assert core.page("d", 16) is None  # no poisoned page: the next request reads again
    page0 = core.page("d", 0)
    assert page0 is not None and page0.pins == 1  # only the first request's pin
    page8 = core.page("d", 8)
    assert page8 is not None and page8.pins == 0 and page8.waiters == []
    assert not core.loaded(load8).finished  # the failed request is not woken again
    assert present.waiter.done


def test_zero_fill_needs_no_read_and_is_dirty() -> None:
    core = cache()
    adm = core.admit("d", [0, 8], {8}, frames(2))
    assert [(ld.lba, ld.count) for ld in adm.to_read] == [(0, 1)]
    assert adm.zero == [FRAME + 4096]
    page = core.page("d", 8)
    assert page is not None and page.state is State.PRESENT and page.dirty


def test_dirty_while_writing_stays_dirty() -> None:
    core = cache()
    adm = core.admit("d", [0], set(), frames(1))
    core.loaded(adm.to_read[0])
    core.mark_dirty("d", [0])
    (store,) = core.start_write("d")
    page = core.page("d", 0)
    assert page is not None and (page.state, page.dirty) == (State.WRITING, False)
    core.mark_dirty("d", [0])
    core.written(store)
    assert (page.state, page.dirty) == (State.PRESENT, True)
    (store,) = core.start_write("d")
    core.write_failed(store)
    assert page.dirty


def test_dirty_pages_are_written_as_runs_split_where_they_differ() -> None:
    core = cache()
    adm = core.admit_runs("d", [(0, 8)], set(), frames(8))
    core.loaded(adm.to_read[0])
    core.mark_dirty_runs("d", [(0, 3), (32, 4)])  # pages 0-2 and 4-7: page 3 stays clean
    stores = core.start_write("d", None, max_pages=3)
    assert [s.parts for s in stores] == [
        ((0, 3, FRAME),), ((32, 3, FRAME + 4 * 4096),), ((56, 1, FRAME + 7 * 4096),)
    ]
    assert core.in_flight_writes("d") == 7 and not core.has_dirty("d")
    for store in stores:
        core.written(store)
    assert core.in_flight_writes("d") == 0


def test_pages_following_on_the_disk_are_one_write_over_scattered_frames() -> None:
    core = cache()
    adm = core.admit_runs("d", [(0, 3)], set(), [FRAME, 0x300000, 0x300000 + 4096])
    for load in adm.to_read:
        core.loaded(load)
    core.mark_dirty_runs("d", [(0, 3)])
    (store,) = core.start_write("d")
    assert store.parts == ((0, 1, FRAME), (8, 2, 0x300000)) and store.count == 3
    core.written(store)
    assert not core.has_dirty("d") and core.in_flight_writes("d") == 0


def test_release_and_mark_dirty_refuse_unknown_pages() -> None:
    core = cache()
    with pytest.raises(UnknownPage):
        core.release("d", [0])
    core.admit("d", [0], set(), frames(1))
    with pytest.raises(UnknownPage):
        core.mark_dirty("d", [0])  # still being read


def test_pin_counts_beyond_a_byte_stay_exact() -> None:
    core = cache()
    adm = core.admit("d", [0], set(), frames(1), holder="vfs")
    core.loaded(adm.to_read[0])
    for _ in range(300):
        core.admit("d", [0], set(), [], holder="vfs")
    page = core.page("d", 0)
    assert page is not None and page.pins == 301 and page.holders == {"vfs": 301}
    assert core.release("d", [0] * 301, "vfs") == 301
    assert page.pins == 0 and not core._spill


def test_second_chance_spares_referenced_pinned_and_dirty_pages() -> None:
    core = cache()
    adm = core.admit("d", [0, 8, 16, 24], set(), frames(4))
    core.loaded(adm.to_read[0])
    core.release("d", [0, 8, 16])  # 24 stays pinned
    core.mark_dirty("d", [8])
    page16 = core.page("d", 16)
    assert page16 is not None
    page16.referenced = True
    sweep = core.sweep(1)
    # first turn clears every reference bit; the second evicts the first clean page
    assert sweep.evicted == [FRAME] and core.page("d", 0) is None
    sweep = core.sweep(10)
    assert sweep.evicted == [FRAME + 2 * 4096]  # page 16; 8 is dirty, 24 pinned
    assert sweep.dirty == {"d": [8]}
    assert core.page("d", 24) is not None and adm.waiter.done
    assert list(core.runs["d"]) == [(8, 1, FRAME + 4096), (24, 1, FRAME + 3 * 4096)]


def test_invalidate_discards_dirty_bytes() -> None:
    core = cache()
    adm = core.admit("d", [0, 8], set(), frames(2))
    core.loaded(adm.to_read[0])
    core.mark_dirty("d", [0, 8])
    core.release("d", [0])
    assert core.invalidate("d", [0, 8]) == [FRAME]  # 8 is pinned: kept, but clean
    assert core.dirty_pages("d") == []


def test_abort_io_after_a_crash() -> None:
    core = cache()
    adm = core.admit("d", [0, 8], set(), frames(2), max_pages=1)
    core.loaded(adm.to_read[1])
    core.mark_dirty("d", [8])
    core.start_write("d")
    out = core.abort_io(errno.EIO, "restart")
    assert out.finished == [adm.waiter] and out.free == [FRAME]
    page = core.page("d", 8)
    assert page is not None and page.state is State.PRESENT and page.dirty and page.pins == 0


def test_heap_per_cached_page_is_a_few_bytes() -> None:
    core = cache(total=1 << 20)
    n = 1 << 15
    adm = core.admit_runs("d", [(0, n)], set(), frames(n), holder="vfs")
    for load in adm.to_read:
        core.loaded(load)
    assert core.heap_bytes() / n <= 64
    assert core.heap_bytes() < sys.getsizeof(bytes(n)) * 32


def _sweep_one_frame_at_a_time(core: PageCache, want: int) -> Sweep:
    """The clock as a hand moving one frame at a time: what ``sweep`` must match."""
    out = Sweep()
    seen: set[int] = set()
    states, size = core._state, len(core._state)
    for _ in range(2 * size):
        if len(out.evicted) >= want:
            break
        s = core._hand
        core._hand = (s + 1) % size
        byte = states[s]
        if byte & STATE_MASK != State.PRESENT or core._pins[s]:
            continue
        if byte & REFERENCED:
            states[s] = byte & ~REFERENCED
        elif byte & DIRTY:
            if s not in seen:
                seen.add(s)
                out.dirty.setdefault("d", []).append(core._lba[s])
        else:
            lba = core._lba[s]
            phys = core.runs["d"].find(lba)
            fire(states, s, 1, Event.EVICT, lba)
            out.evicted += core._drop("d", lba, 1, phys)
    return out


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from(["plain", "pinned", "dirty", "unreferenced", "reading"]),
             min_size=1, max_size=40),
    st.lists(st.integers(0, 50), min_size=1, max_size=4),
    st.integers(0, 39),
)
def test_sweep_judges_stretches_as_one_frame_at_a_time_would(
    kinds: list[str], wants: list[int], hand: int
) -> None:
    cores = [cache(), cache()]
    for core in cores:
        n = len(kinds)
        adm = core.admit_runs("d", [(0, n)], set(), frames(n), max_pages=1)
        for k, kind in enumerate(kinds):
            if kind != "reading":
                core.loaded(adm.to_read[k])
            if kind != "pinned":
                core.release_runs("d", [(8 * k, 1)])
            if kind == "dirty":
                core.mark_dirty_runs("d", [(8 * k, 1)])
            if kind == "unreferenced":
                core._state[k] &= ~REFERENCED
        core._hand = hand % n
    fast, slow = cores
    for want in wants:
        a, b = fast.sweep(want), _sweep_one_frame_at_a_time(slow, want)
        assert (a.evicted, a.dirty) == (b.evicted, b.dirty)
        assert (fast._state, fast._hand, list(fast.runs["d"])) == (
            slow._state, slow._hand, list(slow.runs["d"]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 30), st.integers(0, 5)), max_size=8),
       st.sampled_from([1, 8]))
def test_runs_merge_as_their_pages_do(runs: list[tuple[int, int]], spp: int) -> None:
    named = [(lba * spp, n) for lba, n in runs]
    pages = [lba + k * spp for lba, n in named for k in range(n)]
    assert merge_runs(named, spp) == page_runs(pages, spp) == page_runs(reversed(pages), spp)
