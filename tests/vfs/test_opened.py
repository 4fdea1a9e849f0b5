"""The extents an open was told, cut to the pages of one fetch (servers/vfs/opened.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from servers.fs.protocol import FileExtent
from servers.vfs.abi import PAGE_SIZE
from servers.vfs.opened import extents_for


def sectors_of(extents: list[FileExtent], ss: int) -> dict[int, int]:
    """File byte offset of each sector -> its lba."""
    return {e.file_offset + k * ss: e.lba + k for e in extents for k in range(e.count)}


def test_a_whole_small_file_and_a_cut_of_it() -> None:
    known = [FileExtent(0, 1000, 8), FileExtent(4096, 5000, 16)]  # 3 pages in two runs
    assert extents_for(known, 0, 3, 3 * PAGE_SIZE, 512) == known
    assert extents_for(known, 1, 2, 3 * PAGE_SIZE, 512) == [FileExtent(4096, 5000, 16)]
    assert extents_for(known, 2, 1, 12000, 512) == [FileExtent(8192, 5008, 8)]


def test_pages_the_open_was_not_told_about_are_asked_for() -> None:
    known = [FileExtent(0, 1000, 8)]
    assert extents_for(known, 0, 2, 4096, 512) is None  # past the file's whole pages
    assert extents_for([], 0, 1, 4096, 512) is None
    assert extents_for(known, 0, 0, 4096, 512) is None
    assert extents_for(known, 1, 1, 8192, 512) is None  # no sector of that page was named


def test_what_the_clusters_cover_is_what_maprange_would_answer() -> None:
    """512-byte clusters: a 600-byte file's two sectors are all of its page there is."""
    known = [FileExtent(0, 1000, 2)]
    assert extents_for(known, 0, 1, 600, 512) == known


@settings(max_examples=100, deadline=None)
@given(
    runs=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    first=st.integers(0, 20),
    count=st.integers(1, 20),
    ss=st.sampled_from([512, 4096]),
)
def test_the_cut_names_exactly_the_sectors_of_those_pages(
    runs: list[int], first: int, count: int, ss: int
) -> None:
    spp = PAGE_SIZE // ss
    known: list[FileExtent] = []
    offset, lba = 0, 64
    for pages in runs:  # scattered runs of whole pages
        known.append(FileExtent(offset, lba, pages * spp))
        offset += pages * PAGE_SIZE
        lba += pages * spp + 3 * spp
    size = offset
    got = extents_for(known, first, count, size, ss)
    if (first + count) * PAGE_SIZE > size:
        assert got is None
        return
    assert got is not None
    want = {off: s for off, s in sectors_of(known, ss).items()
            if first * PAGE_SIZE <= off < (first + count) * PAGE_SIZE}
    assert sectors_of(got, ss) == want
