"""The page grid: physical-sector alignment, edge pages, zero-fill coverage, run commands."""

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
    assert grid.page_runs([Extent(3, 10)]) == [(0, 2)]
    assert grid.page_runs([Extent(20, 4), Extent(0, 8), Extent(8, 1)]) == [(0, 3)]  # merged
    assert grid.page_runs([Extent(0, 8), Extent(40, 8)]) == [(0, 1), (40, 1)]
    assert grid.span(8) == grid.span(8).__class__(8, 8, 0)


def test_alignment_offset_gives_a_negative_head_page() -> None:
    grid = PageGeometry.from_geometry(geometry(offset=1, total=20))
    assert grid.origin == 1
    assert grid.page_of(0) == -7  # the head page: sector 0 sits at the end of its frame
    head = grid.span(-7)
    assert (head.lba, head.count, head.offset) == (0, 1, 7 * 512)
    assert grid.run_command(-7, 1, 0x10000) == (0, 1, [Segment(0x10000 + 7 * 512, 512)])
    # a run from the head page to the tail: one segment, clipped at both ends
    assert grid.run_command(-7, 4, 0x10000) == (0, 20, [Segment(0x10000 + 7 * 512, 20 * 512)])
    tail = grid.span(17)  # sectors 17..19 exist, 20..24 do not
    assert (tail.lba, tail.count, tail.offset) == (17, 3, 0)
    assert grid.is_partial(-7) and grid.is_partial(17) and not grid.is_partial(9)


def test_4k_logical_sectors_one_sector_per_page() -> None:
    grid = PageGeometry.from_geometry(geometry(lss=4096, offset=0, total=10))
    assert (grid.spp, grid.origin) == (1, 0)
    assert grid.page_runs([Extent(2, 3)]) == [(2, 3)]


def test_unsupported_sector_size() -> None:
    with pytest.raises(UnsupportedGeometry):
        PageGeometry.from_geometry(geometry(lss=8192))


def test_extents_are_checked() -> None:
    grid = PageGeometry.from_geometry(geometry(total=100))
    with pytest.raises(BadExtent) as info:
        grid.page_runs([Extent(96, 8)])
    assert info.value.errno == errno.ERANGE
    with pytest.raises(BadExtent):
        grid.page_runs([Extent(0, 0)])


def test_whole_pages_for_zero_fill() -> None:
    grid = PageGeometry.from_geometry(geometry(total=100))
    # sectors 4..27: page 0 partly, 8 and 16 wholly, 24 partly
    assert grid.whole_pages([Extent(4, 24)]) == {8, 16}
    # two adjacent extents together cover page 8
    assert grid.whole_pages([Extent(8, 3), Extent(11, 5)]) == {8}
    # the tail page (96..99) is whole when every sector that exists is inside
    assert grid.whole_pages([Extent(96, 4)]) == {96}


def test_one_command_per_frame_run_and_per_disk_run() -> None:
    grid = PageGeometry.from_geometry(geometry())
    assert grid.run_command(16, 10, 0x100000) == (16, 80, [Segment(0x100000, 10 * 4096)])
    parts = ((0, 3, 0x100000), (24, 2, 0x300000))  # on the disk they follow each other
    assert grid.parts_command(parts) == (
        0, 40, [Segment(0x100000, 3 * 4096), Segment(0x300000, 2 * 4096)]
    )


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
    ((first, n),) = grid.page_runs([Extent(lba, count)])
    pages = list(range(first, first + n * grid.spp, grid.spp))
    covered: list[int] = []
    for page in pages:
        span = grid.span(page)
        assert grid.is_page(page) and span.count > 0
        assert span.offset + span.count * lss <= 4096
        assert span.offset == (span.lba - page) * lss  # one offset rule for every page
        covered.extend(range(span.lba, span.lba + span.count))
    assert len(covered) == len(set(covered))
    assert set(range(lba, lba + count)) <= set(covered)
    start, sectors, sg = grid.run_command(first, n, 0x100000)
    assert (start, sectors) == (min(covered), len(covered))
    assert sum(s.length for s in sg) == sectors * lss
