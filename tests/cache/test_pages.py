"""The pure page-state core: transition table, wait lists, pins, failure, second chance."""

from __future__ import annotations

import errno

import pytest

from drivers.protocol import Geometry
from servers.cache.errors import IllegalTransition, UnknownPage
from servers.cache.geometry import PageGeometry
from servers.cache.pages import TRANSITIONS, Event, Page, PageCache, State

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
            page = Page(0, FRAME, state)
            if (state, event) in TRANSITIONS:
                page.fire(event)
                assert page.state is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(IllegalTransition):
                    page.fire(event)


def test_second_request_joins_the_wait_list_instead_of_reading_again() -> None:
    core = cache()
    first = core.admit("d", [0, 8], set(), frames(2))
    assert [p.lba for p in first.to_read] == [0, 8]
    second = core.admit("d", [8, 16], set(), frames(1, 0x200000))
    assert [p.lba for p in second.to_read] == [16]  # page 8 is in flight: no second read
    assert core.page("d", 8) is not None and len(core.page("d", 8).waiters) == 2  # type: ignore[union-attr]
    done = core.loaded("d", [0, 8])
    assert done.finished == [first.waiter]
    assert not second.waiter.done
    assert core.loaded("d", [16]).finished == [second.waiter]
    assert core.page("d", 8).pins == 2  # type: ignore[union-attr]


def test_failed_read_frees_frames_fails_every_waiter_and_drops_its_pins() -> None:
    core = cache()
    present = core.admit("d", [0], set(), frames(1))
    core.loaded("d", [0])
    a = core.admit("d", [0, 8, 16], set(), frames(2, 0x200000))
    b = core.admit("d", [16], set(), [])
    out = core.load_failed("d", [16], errno.EIO, "medium error")
    assert set(out.finished) == {a.waiter, b.waiter}
    assert a.waiter.error == (errno.EIO, "medium error")
    assert out.free == [0x201000]
    assert core.page("d", 16) is None  # no poisoned page: the next request reads again
    assert core.page("d", 0).pins == 1  # type: ignore[union-attr]  # only the first request's pin
    page8 = core.page("d", 8)
    assert page8 is not None and page8.pins == 0 and page8.waiters == []
    assert not core.loaded("d", [8]).finished  # the failed request is not woken again
    assert present.waiter.done


def test_zero_fill_needs_no_read_and_is_dirty() -> None:
    core = cache()
    adm = core.admit("d", [0, 8], {8}, frames(2))
    assert [p.lba for p in adm.to_read] == [0]
    assert adm.zero == [FRAME + 4096]
    page = core.page("d", 8)
    assert page is not None and page.state is State.PRESENT and page.dirty


def test_dirty_while_writing_stays_dirty() -> None:
    core = cache()
    core.admit("d", [0], set(), frames(1))
    core.loaded("d", [0])
    core.mark_dirty("d", [0])
    (page,) = core.start_write("d")
    assert (page.state, page.dirty) == (State.WRITING, False)
    core.mark_dirty("d", [0])
    core.written("d", [0])
    assert (page.state, page.dirty) == (State.PRESENT, True)
    core.start_write("d")
    core.write_failed("d", [0])
    assert page.dirty


def test_release_and_mark_dirty_refuse_unknown_pages() -> None:
    core = cache()
    with pytest.raises(UnknownPage):
        core.release("d", [0])
    core.admit("d", [0], set(), frames(1))
    with pytest.raises(UnknownPage):
        core.mark_dirty("d", [0])  # still being read


def test_second_chance_spares_referenced_pinned_and_dirty_pages() -> None:
    core = cache()
    adm = core.admit("d", [0, 8, 16, 24], set(), frames(4))
    core.loaded("d", [0, 8, 16, 24])
    core.release("d", [0, 8, 16])  # 24 stays pinned
    core.mark_dirty("d", [8])
    core.page("d", 16).referenced = True  # type: ignore[union-attr]
    sweep = core.sweep(1)
    # first turn clears every reference bit; the second evicts the first clean page
    assert sweep.evicted == [FRAME] and core.page("d", 0) is None
    sweep = core.sweep(10)
    assert sweep.evicted == [FRAME + 2 * 4096]  # page 16; 8 is dirty, 24 pinned
    assert sweep.dirty == {"d": [8]}
    assert core.page("d", 24) is not None and adm.waiter.done


def test_invalidate_discards_dirty_bytes() -> None:
    core = cache()
    core.admit("d", [0, 8], set(), frames(2))
    core.loaded("d", [0, 8])
    core.mark_dirty("d", [0, 8])
    core.release("d", [0])
    assert core.invalidate("d", [0, 8]) == [FRAME]  # 8 is pinned: kept, but clean
    assert core.dirty_pages("d") == []


def test_abort_io_after_a_crash() -> None:
    core = cache()
    adm = core.admit("d", [0, 8], set(), frames(2))
    core.loaded("d", [8])
    core.mark_dirty("d", [8])
    core.start_write("d")
    out = core.abort_io(errno.EIO, "restart")
    assert out.finished == [adm.waiter] and out.free == [FRAME]
    page = core.page("d", 8)
    assert page is not None and page.state is State.PRESENT and page.dirty and page.pins == 0
