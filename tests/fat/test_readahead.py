"""Read-ahead across a directory: the pure planner, and the volume's answers built on it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.fat.dirent import DirSlot, ShortEntry
from servers.fat.mkfs import make_filesystem
from servers.fat.readahead import BATCH_FIRST, BATCH_MAX, DIRS_MAX, DirReadAhead
from tests.fat.helpers import mounted

pytestmark = pytest.mark.anyio

MAX_PAGES = 256


def directory(n: int, step: int = 2) -> list[DirSlot]:
    """``n`` live entries at indexes 0, step, 2*step, ... (a long name takes the one between)."""
    return [DirSlot(i * step, i * step, ShortEntry(b"F%07dBIN" % i, size=4096), None)
            for i in range(n)]


def one_page(slot: DirSlot) -> int:
    return 1


def indexes(slots: list[DirSlot]) -> list[int]:
    return [s.index for s in slots]


# ------------------------------------------------------------------ the planner
def test_one_open_is_no_pattern_and_the_same_entry_again_neither() -> None:
    plan, slots = DirReadAhead(), directory(100)
    assert plan.opened(7, slots, 20, one_page, MAX_PAGES) == []
    assert plan.opened(7, slots, 20, one_page, MAX_PAGES) == []
    assert plan.opened(9, slots, 20, one_page, MAX_PAGES) == []  # another directory: its first


def test_a_second_file_starts_a_pass_at_it_and_batches_double() -> None:
    plan, slots = DirReadAhead(), directory(200)
    plan.opened(1, slots, 10, one_page, MAX_PAGES)
    first = plan.opened(1, slots, 20, one_page, MAX_PAGES)
    assert indexes(first) == list(range(20, 20 + 2 * BATCH_FIRST, 2))  # the opened one included
    assert plan.opened(1, slots, 22, one_page, MAX_PAGES) == []  # before the batch's middle
    second = plan.opened(1, slots, 20 + BATCH_FIRST, one_page, MAX_PAGES)  # its middle
    assert indexes(second) == list(range(first[-1].index + 2, first[-1].index + 2 + 4 * BATCH_FIRST, 2))


def test_a_reader_in_another_order_is_followed_by_misses() -> None:
    """Names sorted by the reader are in no entry order: every entry the pass has not
    reached sends the next batch, so most opens find their file read ahead."""
    plan, slots = DirReadAhead(), directory(300)
    order = list(range(300))
    random.Random(5).shuffle(order)
    ahead: set[int] = set()
    hits = batches = 0
    for k in order:
        hits += slots[k].index in ahead
        batch = indexes(plan.opened(3, slots, slots[k].index, one_page, MAX_PAGES))
        batches += bool(batch)
        ahead.update(batch)
    assert ahead == set(indexes(slots))  # one whole pass, from the second open's entry round
    assert batches == 7  # 8 + 16 + 32 + 64 + 64 + 64 + 52 entries
    assert hits >= 290  # only opens before the pass got there missed


def test_a_second_pass_over_the_directory_reads_ahead_again() -> None:
    plan, slots = DirReadAhead(), directory(40)
    first: set[int] = set()
    for k in range(40):
        first.update(indexes(plan.opened(3, slots, slots[k].index, one_page, MAX_PAGES)))
    assert first == set(indexes(slots))  # from the second open to the end, then round
    again: set[int] = set()
    for k in range(40):  # the same reader once more: as many opens as the pass chose, then on
        again.update(indexes(plan.opened(3, slots, slots[k].index, one_page, MAX_PAGES)))
    assert again and again <= set(indexes(slots))


def test_entries_not_worth_it_are_skipped_and_pages_bound_a_batch() -> None:
    plan, slots = DirReadAhead(), directory(100)

    def pages(slot: DirSlot) -> int:
        return 0 if slot.index % 4 == 0 else 3  # every other entry: a directory, say

    plan.opened(1, slots, 0, pages, 10)
    chosen = plan.opened(1, slots, 2, pages, 10)
    assert indexes(chosen) == [2, 6, 10]  # 9 pages; a fourth would pass 10


def test_directories_followed_are_bounded() -> None:
    plan, slots = DirReadAhead(), directory(4)
    for d in range(DIRS_MAX + 10):
        plan.opened(d, slots, 0, one_page, MAX_PAGES)
    assert len(plan) == DIRS_MAX


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 20), min_size=1, max_size=120),
    opens=st.lists(st.integers(0, 119), max_size=200),
)
def test_one_pass_bounded_batches_and_only_wanted_entries(sizes: list[int], opens: list[int]) -> None:
    """Whatever the opens: a batch holds at most BATCH_MAX entries and the page budget,
    only entries worth it (pages > 0), and an entry is read ahead again only in a new
    pass, after more opens than there are such entries."""
    plan, slots = DirReadAhead(), directory(len(sizes))
    want = {s.index: n for s, n in zip(slots, sizes, strict=True)}
    worth = sum(1 for n in sizes if 0 < n <= 40)
    last: dict[int, int] = {}  # entry -> the open that last read it ahead
    for t, k in enumerate(opens):
        batch = plan.opened(0, slots, slots[k % len(slots)].index, lambda s: want[s.index], 40)
        got = indexes(batch)
        assert len(got) <= BATCH_MAX and sum(want[i] for i in got) <= 40
        assert all(want[i] > 0 for i in got)
        assert len(set(got)) == len(got)
        for i in got:
            assert i not in last or t - last[i] > worth
            last[i] = t


# ------------------------------------------------------------------ the volume
async def test_the_volume_reads_ahead_the_next_small_files_as_merged_spans(tmp_path: Path) -> None:
    image = tmp_path / "v.img"
    make_filesystem(image, 24 << 20, fat=16, cluster_size=4096)
    async with mounted(image) as vol:
        await vol.mkdir("/d")
        for i in range(12):
            handle = await vol.open(f"/d/f{i:02d}", create=True)
            await vol.write(handle, 0, bytes([i]) * (4096 if i != 5 else 9000))
            await vol.close(handle)
        await vol.mkdir("/d/sub")  # a directory in the middle: never read ahead
        handle = await vol.open("/d/big", create=True)
        await vol.write(handle, 0, b"B" * 70_000)  # past the bound: not read ahead
        await vol.close(handle)
        first = await vol.open("/d/f00")
        assert vol.read_ahead(first, 65536, 4096, 256) == []  # one open is no pattern
        second = await vol.open("/d/f01")
        spans = vol.read_ahead(second, 65536, 4096, 256)
        expected: list[tuple[int, int]] = []
        for i in range(1, 1 + BATCH_FIRST):
            for e in await vol.extents(f"/d/f{i:02d}"):
                size = 9000 if i == 5 else 4096
                count = -(-size // 4096) * 8
                if expected and expected[-1][0] + expected[-1][1] == e.lba:
                    expected[-1] = (expected[-1][0], expected[-1][1] + count)
                else:
                    expected.append((e.lba, count))
        assert spans == expected and len(spans) == 1  # written one after another: one span
        # the extents an open answers for a small file are what MapRange would answer
        assert vol.opened_extents(second, 65536, 4096) == await vol.extents(second, 0, 4096)
        big = await vol.open("/d/big")
        assert vol.opened_extents(big, 65536, 4096) == []
        for h in (first, second, big):
            await vol.close(h)
