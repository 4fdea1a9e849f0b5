"""Pins per holder: only the port a pin was handed to may release it (issue 10).

The harness's ``vfs`` port is the holder of ``CacheRead`` pages (it is their
notify port, whoever asked); the ``fs`` port holds what it maps with
``CacheMap``. A ``Release`` or ``GiveBackDone`` for pins the sender does not
hold is refused with ``NotPinHolder`` (EPERM), counted, and changes nothing.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.protocol import Geometry
from servers.cache.errors import NotPinHolder, UnknownPage
from servers.cache.geometry import PageGeometry
from servers.cache.pages import PageCache
from servers.cache.protocol import GiveBackDone, PageSpan, Release
from tests.cache.harness import System, booted

pytestmark = pytest.mark.anyio


def pins(s: System, lbas: list[int]) -> list[dict[str, int]]:
    out = []
    for lba in lbas:
        page = s.cache.core.page("disk", lba)
        assert page is not None
        assert page.pins == sum(page.holders.values())
        out.append(dict(page.holders))
    return out


async def test_a_file_system_cannot_release_the_vfs_pins(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        ready = await s.read(0, 32)  # asked by fs, handed to (and pinned for) vfs
        lbas = [p.lba for p in ready.pages]
        assert pins(s, lbas) == [{"vfs": 1}] * 4
        with pytest.raises(NotPinHolder) as refused:
            await s.call(Release("disk", lbas))
        assert refused.value.errno == errno.EPERM
        assert pins(s, lbas) == [{"vfs": 1}] * 4  # no effect
        assert s.cache.cache_stats().pins_refused == 4
        assert s.router.counters.refusals_by_type["Release"] == 1
        await s.holder.release("disk", lbas)  # the holder itself may
        await s.call(Release("disk", []))  # (a call behind the holder's send: it has landed)
        assert s.cache.cache_stats().pages_pinned == 0


async def test_a_release_by_runs_is_refused_for_pins_the_sender_does_not_hold(
    tmp_path: Path,
) -> None:
    async with booted(tmp_path) as s:
        ready = await s.read(0, 32)  # pages 0, 8, 16, 24 pinned for vfs
        refs = await s.map(16, 32)  # pages 16..40 pinned for fs too
        lbas = [p.lba for p in ready.pages]
        with pytest.raises(NotPinHolder) as refused:
            await s.call(Release("disk", [], [PageSpan(0, 6)]))  # fs: 0..40, holds 16..40
        assert refused.value.errno == errno.EPERM
        assert pins(s, lbas) == [{"vfs": 1}] * 4  # the vfs's pins are untouched
        assert [p.lba for p in refs] == [16, 24, 32, 40]
        assert pins(s, [16, 24, 32, 40]) == [{"vfs": 1}] * 2 + [{}] * 2  # fs's own pins went
        assert s.cache.cache_stats().pins_refused == 2
        await s.holder.endpoint.call("cache", Release("disk", [], [PageSpan(3, 4)]), object)
        assert s.cache.cache_stats().pages_pinned == 0  # a span may name any sector of a page


async def test_the_vfs_cannot_release_a_file_system_pins(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        refs = await s.map(64, 16)  # CacheMap: the pins are the caller's (fs)
        lbas = [p.lba for p in refs]
        with pytest.raises(NotPinHolder):
            await s.holder.endpoint.call("cache", Release("disk", lbas), object)
        assert pins(s, lbas) == [{"fs": 1}] * 2
        assert s.cache.cache_stats().pins_refused == 2
        await s.call(Release("disk", lbas))
        assert s.cache.cache_stats().pages_pinned == 0


async def test_a_shared_page_keeps_the_other_holders_pin(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        ready = await s.read(0, 16)
        lbas = [p.lba for p in ready.pages]
        await s.map(0, 8)  # fs pins page 0 too
        assert pins(s, lbas) == [{"vfs": 1, "fs": 1}, {"vfs": 1}]
        with pytest.raises(NotPinHolder):  # its own pin goes, vfs's page 8 is refused
            await s.call(Release("disk", [0, 0, 8]))
        assert pins(s, lbas) == [{"vfs": 1}, {"vfs": 1}]
        assert s.cache.cache_stats().pins_refused == 2  # the second 0 (vfs's) and 8
        with pytest.raises(UnknownPage):  # nobody pins page 16: not a holder question
            await s.call(Release("disk", [16]))
        assert s.cache.cache_stats().pins_refused == 2


async def test_give_back_done_only_from_an_asked_holder(tmp_path: Path) -> None:
    async with booted(tmp_path) as s:
        with pytest.raises(NotPinHolder):
            await s.call(GiveBackDone(1, 99))  # fs is no page holder of this cache
        assert s.router.counters.refusals_by_type["GiveBackDone"] == 1
        assert s.cache.cache_stats().pins_refused == 99
        # The configured holder may answer a round that already ended: no effect, no error.
        await s.holder.endpoint.call("cache", GiveBackDone(1, 0), object)
        assert s.router.counters.refusals_by_type["GiveBackDone"] == 1


async def test_give_back_round_still_works_for_the_real_holder(tmp_path: Path) -> None:
    async with booted(tmp_path, capacity_pages=8) as s:
        await s.read(0, 64)  # vfs pins all 8 pages
        ready = await s.read(64, 8)  # needs a frame: GiveBack to vfs, which releases its pins
        assert s.holder.give_backs and ready.pages[0].lba == 64
        assert s.cache.cache_stats().pins_refused == 0


# ------------------------------------------------------------------ the pure core
def _core() -> PageCache:
    core = PageCache()
    core.add_device("d", PageGeometry.from_geometry(
        Geometry("t", 512, 4096, 0, 1000, 64, 1 << 20, 1, 256)))
    return core


_ACTIONS = st.lists(st.tuples(st.sampled_from(["admit", "release"]),
                              st.sampled_from(["vfs", "fat"]),
                              st.lists(st.sampled_from([0, 8, 16]), min_size=1, max_size=3)),
                    max_size=25)


@settings(max_examples=60, deadline=None)
@given(_ACTIONS)
def test_only_the_holder_drops_its_pins(actions: list[tuple[str, str, list[int]]]) -> None:
    core = _core()
    model: dict[tuple[str, int], int] = {}
    next_frame = 0x100000
    for action, holder, lbas in actions:
        if action == "admit":
            unique = list(dict.fromkeys(lbas))
            need = core.absent("d", unique)
            new = [next_frame + 4096 * i for i in range(need)]
            next_frame += 4096 * need
            core.admit("d", unique, set(), new, holder)
            for lba in unique:
                model[holder, lba] = model.get((holder, lba), 0) + 1
            continue
        expect = dict(model)
        refused = 0
        for lba in lbas:
            if expect.get((holder, lba), 0) > 0:
                expect[holder, lba] -= 1
            else:
                refused += 1
        try:
            released = core.release("d", lbas, holder)
        except (NotPinHolder, UnknownPage) as exc:
            assert refused and exc.refused == refused
            released = exc.released
        else:
            assert not refused
        assert released == len(lbas) - refused
        model = expect
    for (holder, lba), n in model.items():
        page = core.page("d", lba)
        assert page is not None and page.holders.get(holder, 0) == n
        assert page.pins == sum(page.holders.values())
