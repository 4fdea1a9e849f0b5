"""The page grid: physical-sector alignment, edge pages, zero-fill coverage, command merging."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.protocol import Geometry, Segment
from servers.cache.errors import BadExtent, UnsupportedGeometry
from servers.cache.geometry import PageGeometry, max_pages_per_command
from servers.cache.protocol import Extent


def geometry(
    lss: int = 512, offset: int = 0, total: int = 1000, max_transfer: int = 1 << 20, segs: int = 256
) -> Geometry:
    return Geometry("test", lss, 4096, offset, total, 64, max_transfer, 1, segs)


def test_aligned_grid() -> None:
    grid = PageGeometry.from_geometry(geometry())
    assert (grid.spp, grid.origin) == (8, 0)
    assert grid.page_of(0) == 0 and grid.page_of(7) == 0 and grid.page_of(8) == 8
    assert grid.pages_of([Extent(3, 10)]) == [0, 8]
    assert grid.span(8) == grid.span(8).__class__(8, 8, 0)


def test_alignment_offset_gives_a_negative_head_page() -> None:
    grid = PageGeometry.from_geometry(geometry(offset=1, total=20))
    assert grid.origin == 1
    assert grid.page_of(0) == -7  # the head page: sector 0 sits at the end of its frame
    head = grid.span(-7)
    assert (head.lba, head.count, head.offset) == (0, 1, 7 * 512)
    assert grid.segment(-7, 0x10000) == Segment(0x10000 + 7 * 512, 512)
    tail = grid.span(17)  # sectors 17..19 exist, 20..24 do not
    assert (tail.lba, tail.count, tail.offset) == (17, 3, 0)
    assert grid.is_partial(-7) and grid.is_partial(17) and not grid.is_partial(9)


def test_4k_logical_sectors_one_sector_per_page() -> None:
    grid = PageGeometry.from_geometry(geometry(lss=4096, offset=0, total=10))
    assert (grid.spp, grid.origin) == (1, 0)
    assert grid.pages_of([Extent(2, 3)]) == [2, 3, 4]


def test_unsupported_sector_size() -> None:
    with pytest.raises(UnsupportedGeometry):
        PageGeometry.from_geometry(geometry(lss=8192))


def test_extents_are_checked() -> None:
    grid = PageGeometry.from_geometry(geometry(total=100))
    with pytest.raises(BadExtent) as info:
        grid.pages_of([Extent(96, 8)])
    assert info.value.errno == errno.ERANGE
    with pytest.raises(BadExtent):
        grid.pages_of([Extent(0, 0)])


def test_whole_pages_for_zero_fill() -> None:
    grid = PageGeometry.from_geometry(geometry(total=100))
    # sectors 4..27: page 0 partly, 8 and 16 wholly, 24 partly
    assert grid.whole_pages([Extent(4, 24)]) == {8, 16}
    # two adjacent extents together cover page 8
    assert grid.whole_pages([Extent(8, 3), Extent(11, 5)]) == {8}
    # the tail page (96..99) is whole when every sector that exists is inside
    assert grid.whole_pages([Extent(96, 4)]) == {96}


def test_commands_merge_contiguous_runs_up_to_the_limit() -> None:
    grid = PageGeometry.from_geometry(geometry())
    pages = [(lba, 0x100000 + i * 4096 * 3) for i, lba in enumerate(range(0, 80, 8))]
    (one,) = grid.commands(pages, 64)
    assert (one.lba, one.count, len(one.sg)) == (0, 80, 10)
    split = grid.commands(pages, 4)
    assert [(c.lba, c.count) for c in split] == [(0, 32), (32, 32), (64, 16)]
    gap = grid.commands([(0, 0x100000), (8, 0x200000), (24, 0x300000)], 64)
    assert [(c.lba, c.count) for c in gap] == [(0, 16), (24, 8)]


def test_limits_from_driver() -> None:
    assert max_pages_per_command(geometry(max_transfer=16384), None) == 4
    assert max_pages_per_command(geometry(segs=3), None) == 3
    assert max_pages_per_command(geometry(), 2) == 2
    with pytest.raises(UnsupportedGeometry):
        max_pages_per_command(geometry(max_transfer=2048), None)


@given(
    lss=st.sampled_from([512, 1024, 2048, 4096]),
    offset=st.integers(0, 7),
    total=st.integers(1, 300),
    data=st.data(),
)
def test_every_sector_lands_in_exactly_one_page(
    lss: int, offset: int, total: int, data: st.DataObject
) -> None:
    grid = PageGeometry.from_geometry(geometry(lss=lss, offset=offset, total=total))
    lba = data.draw(st.integers(0, total - 1))
    count = data.draw(st.integers(1, total - lba))
    pages = grid.pages_of([Extent(lba, count)])
    covered: list[int] = []
    for page in pages:
        span = grid.span(page)
        assert grid.is_page(page) and span.count > 0
        assert span.offset + span.count * lss <= 4096
        assert span.offset == (span.lba - page) * lss  # one offset rule for every page
        covered.extend(range(span.lba, span.lba + span.count))
    assert len(covered) == len(set(covered))
    assert set(range(lba, lba + count)) <= set(covered)
    (command,) = grid.commands([(p, 0x100000 + i * 4096) for i, p in enumerate(pages)], 10**6)
    assert command.count == len(covered)
    assert sum(s.length for s in command.sg) == command.count * lss
