"""The lazy write order (servers/fat/writeorder.py): any sequence of changes with
prerequisites, written out group by group, reaches the disk in an order that
respects every prerequisite (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.fat.writeorder import WriteOrder

PAGES = 6
FOREIGN = range(100, 103)


@dataclass
class Disk:
    """What the device saw: per page, the versions written and the flush that followed."""

    order: WriteOrder = field(default_factory=WriteOrder)
    version: dict[int, int] = field(default_factory=dict)  # current content of each page
    durable_at: dict[tuple[int, int], int] = field(default_factory=dict)  # (page, v) -> flush
    flushes: int = 0
    needs: list[tuple[int, int, int, int]] = field(default_factory=list)  # p, v, q, v_q

    def write_out(self, pages: set[int] | None = None) -> None:
        for group in self.order.plan(pages):
            self.flushes += 1
            for page in group:  # the whole page, its current content, then a flush
                self.durable_at.setdefault((page, self.version.get(page, 0)), self.flushes)
            self.order.written(group)

    def change(self, page: int, after: list[int]) -> None:
        follows = [q for q in after if q in self.order]
        first = self.order.needs_first(page, follows)
        if first:
            self.write_out(first)
        follows = [q for q in follows if q in self.order]
        v = self.version[page] = self.version.get(page, 0) + 1
        for q in follows:
            if q != page:
                self.needs.append((page, v, q, self.version.get(q, 0)))
        self.order.change(page, follows)

    def data(self, page: int) -> None:
        self.version[page] = self.version.get(page, 0) + 1
        self.order.foreign(page)

    def first_durable(self, page: int, version: int) -> int:
        return min(f for (p, v), f in self.durable_at.items() if p == page and v >= version)


step: st.SearchStrategy[tuple[str, int, list[int]]] = st.one_of(
    st.tuples(st.just("change"), st.integers(0, PAGES - 1),
              st.lists(st.one_of(st.integers(0, PAGES - 1), st.sampled_from(FOREIGN)),
                       max_size=3)),
    st.tuples(st.just("data"), st.sampled_from(FOREIGN), st.just([])),
    st.tuples(st.just("write_out"), st.integers(0, PAGES - 1), st.just([])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_every_prerequisite_is_durable_in_an_earlier_group(steps: list[tuple[str, int, list[int]]]
                                                           ) -> None:
    disk = Disk()
    for kind, page, after in steps:
        if kind == "change":
            disk.change(page, after)
        elif kind == "data":
            disk.data(page)
        else:
            disk.write_out({page})
            assert page not in disk.order
    disk.write_out()
    assert len(disk.order) == 0
    for page, version in disk.version.items():  # every change reached the disk
        assert disk.first_durable(page, version) >= 1
    for p, v, q, v_q in disk.needs:
        assert disk.first_durable(q, v_q) < disk.first_durable(p, v), (p, v, q, v_q)


def test_consecutive_creates_in_one_directory_share_two_groups() -> None:
    """FAT page F, directory page D, data pages: D follows F and the data; no cycle."""
    disk = Disk()
    fat, directory = 0, 1
    for n in range(50):
        disk.change(directory, [])  # the new entry (empty file)
        disk.change(fat, [])  # its reservation
        disk.change(directory, [fat])  # first cluster
        disk.data(100 + n)
        disk.change(directory, [fat, 100 + n])  # the size, after the data
    assert disk.flushes == 0
    disk.write_out()
    assert disk.flushes == 2


def test_a_free_after_a_pending_entry_that_needs_the_fat_forces_a_write() -> None:
    disk = Disk()
    fat, directory = 0, 1
    disk.change(fat, [])
    disk.change(directory, [fat])  # entry naming the chain
    disk.change(directory, [])  # unlink: the entry goes
    assert disk.order.needs_first(fat, [directory]) == {fat}
    disk.change(fat, [directory])  # free: after the entry -> the old FAT page goes first
    assert disk.flushes == 1
    disk.write_out()
    assert disk.first_durable(directory, 2) < disk.first_durable(fat, 2)


def test_a_change_that_would_close_a_cycle_is_refused() -> None:
    order = WriteOrder()
    order.change(0, [])
    order.change(1, [0])
    with pytest.raises(ValueError):
        order.change(0, [1])
