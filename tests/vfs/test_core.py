"""The kernel file driver's pure core, without a router or an event loop."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Iterator
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microkernel.addrspace import StitchedAddressSpace, make_address_space
from microkernel.memory import BadAddress, PhysicalMemory
from microkernel.process import Process
from servers.cache.protocol import PageSpan
from servers.fs.protocol import FsInfo
from servers.vfs import core
from servers.vfs.abi import (
    DATA_OFFSET,
    DIRTY_OFFSET,
    PAGE_SIZE,
    PAGES_PER_MAP_PAGE,
    WINDOW_SIZE,
    map_pages_for,
    mark_dirty,
)
from servers.vfs.core import (
    DIRTY,
    PRIVATE,
    BadHandle,
    CentralFile,
    FilePage,
    FilePages,
    PageSerials,
    Window,
    WindowState,
)
from servers.vfs.filemap_writer import FileMapWriter
from servers.vfs.pages import FileStatePage, ProcessFilePage
from servers.vfs.protocol import OpenFlags


@pytest.fixture
def memory() -> Iterator[PhysicalMemory]:
    mem = PhysicalMemory(512 * PAGE_SIZE)
    yield mem
    mem.close()


def _table(records: dict[int, FilePage], spp: int = 8) -> FilePages:
    """A page table built a page at a time (neighbours that continue each other merge)."""
    table = FilePages()
    for p, fp in sorted(records.items()):
        if fp.cache_lba is None:
            table.put_private(p, fp)
        else:
            table.put(p, 1, fp.phys, fp.cache_lba, spp)
        if fp.dirty:
            table.change(p, p + 1, add=DIRTY)
    return table


def _info(size: int) -> FsInfo:
    return FsInfo("f", 0x20, size, size, False, 0.0, 0.0, 0.0, 7)


def _cfile(memory: PhysicalMemory, size: int) -> CentralFile:
    (frame,) = memory.alloc("t", 1)
    return CentralFile(
        ("fat0", 7), 1, _info(size), frame, FileStatePage(memory.view(frame), writable=True)
    )


def _window(
    memory: PhysicalMemory, cfile: CentralFile, flags: OpenFlags, handle: int = 1
) -> Window:
    fm, pp = memory.alloc("t", 2)
    memory.zero([fm, pp])
    proc = Process(1, "p", "proc:1", StitchedAddressSpace(memory, PAGE_SIZE), cast(Any, None))
    window = Window(
        handle,
        proc,
        cfile,
        StitchedAddressSpace(memory, WINDOW_SIZE),
        int(flags),
        fm,
        pp,
        FileMapWriter(memory.view(fm)),
        ProcessFilePage(memory.view(pp)),
    )
    cfile.windows.add(window)
    return window


def test_window_states_admit_operations_only_while_open(memory: PhysicalMemory) -> None:
    cfile = _cfile(memory, 10_000)
    window = _window(memory, cfile, OpenFlags.READ)
    with pytest.raises(BadHandle):
        core.begin_op(window)  # OPENING
    core.opened(window)
    core.begin_op(window)
    assert core.begin_close(window)
    assert window.state is WindowState.CLOSING
    assert not core.may_map(window)  # nothing is mapped into a closing window
    with pytest.raises(BadHandle) as info:
        core.begin_op(window)
    assert info.value.errno == errno.EBADF
    assert not core.begin_close(window)  # a second close joins the first
    with pytest.raises(BadHandle):
        core.finish_close(window)  # an operation is still in flight: frames stay
    assert core.end_op(window)  # the last one: the closer may go on
    frames = core.finish_close(window)
    assert frames == [window.filemap_frame, window.procpage_frame]
    assert window.state.value == "closed"
    assert window not in cfile.windows


def test_part_pages_respect_size_reservation_and_window(memory: PhysicalMemory) -> None:
    cfile = _cfile(memory, 10_000)
    reader = _window(memory, cfile, OpenFlags.READ)
    writer = _window(memory, cfile, OpenFlags.READ | OpenFlags.WRITE, handle=2)
    cfile.published = 5000  # a writer reserved up to 10 000 and published 5000
    assert list(core.part_pages(reader, 0, 1 << 20)) == [0, 1]
    assert list(core.part_pages(reader, 5000, 10)) == []
    assert list(core.part_pages(writer, 5000, 1 << 20)) == [1, 2]
    big = _cfile(memory, 64 << 20)
    huge = _window(memory, big, OpenFlags.READ, handle=3)
    assert len(core.part_pages(huge, 0, 64 << 20)) == core.MAX_CALL_PAGES
    for position, size in [(-1, 10), (0, -1), ((1 << 63) - 5, 10)]:
        with pytest.raises(OSError) as info:
            core.part_pages(reader, position, size)
        assert info.value.errno == errno.EINVAL


def test_parts_are_forgotten_at_once_and_unmapped_only_if_not_mapped_again(
    memory: PhysicalMemory,
) -> None:
    cfile = _cfile(memory, 1 << 20)
    window = _window(memory, cfile, OpenFlags.READ)
    core.opened(window)
    core.record_mapping(window, 0, 3, index=1)
    assert core.unmapped_runs(window, range(5)) == [[3, 4]]
    first, n, serials = core.forget_part(window, 1)
    assert (first, n) == (0, 3) and not window.mapped
    core.record_mapping(window, 1, 1, index=2)  # page 1 mapped again meanwhile
    assert core.stale_spans(window, serials) == [(0, 1), (2, 3)]
    core.forget_part(window, 2)  # unlinked again: its own removal unmaps it, not the first
    assert core.stale_spans(window, serials) == [(0, 1), (2, 3)]


def test_dirty_map_is_per_page_and_taken_once(memory: PhysicalMemory) -> None:
    """The library marks bytes through its mapping; the core takes exactly those pages."""
    cfile = _cfile(memory, 64 << 20)
    window = _window(memory, cfile, OpenFlags.READ | OpenFlags.WRITE)
    space = make_address_space(memory, WINDOW_SIZE)
    window.space = space
    for m in map_pages_for(PAGES_PER_MAP_PAGE - 2, 4):  # a run across two dirty-map pages
        (frame,) = memory.alloc("t", 1)
        memory.zero([frame])
        space.map(DIRTY_OFFSET + m * PAGE_SIZE, [frame], writable=True)
        window.dirty_frames[m] = frame
    first = PAGES_PER_MAP_PAGE - 2
    mark_dirty(space, first * PAGE_SIZE + 4095, 2)  # one byte on each side of a page edge
    mark_dirty(space, (first + 3) * PAGE_SIZE, 1)
    assert core.take_dirty(window, memory, first, 4) == [first, first + 1, first + 3]
    assert core.take_dirty(window, memory, first, 4) == []  # taken: clean until stored again
    mark_dirty(space, (first + 2) * PAGE_SIZE + 7, 1)
    assert core.collect_window(window, memory) == [first + 2]
    space.close()


@settings(max_examples=40, deadline=None)
@given(
    st.sets(st.integers(0, 2 * PAGES_PER_MAP_PAGE - 1), max_size=60),
    st.integers(0, 2 * PAGES_PER_MAP_PAGE - 1),
    st.integers(1, 2 * PAGES_PER_MAP_PAGE),
)
def test_taking_dirt_returns_and_clears_exactly_the_stored_pages(
    stored: set[int], first: int, count: int
) -> None:
    """Any pattern over two dirty-map pages: a take of a range returns the stored pages in
    it, ascending, clears exactly those (a second take finds nothing there), and leaves
    the rest for later."""
    memory = PhysicalMemory(64 * PAGE_SIZE)
    cfile = _cfile(memory, 64 << 20)
    window = _window(memory, cfile, OpenFlags.READ | OpenFlags.WRITE)
    for m in (0, 1):
        (frame,) = memory.alloc("t", 1)
        memory.zero([frame])
        window.dirty_frames[m] = frame
    for p in stored:
        m, i = divmod(p, PAGES_PER_MAP_PAGE)
        memory.view(window.dirty_frames[m] + i, 1)[0] = 1 + p % 200
    inside = sorted(p for p in stored if first <= p < first + count)
    assert core.take_dirty(window, memory, first, count) == inside
    assert core.take_dirty(window, memory, first, count) == []
    assert core.collect_window(window, memory) == sorted(stored - set(inside))
    memory.close()


def test_writeback_plan_takes_only_dirty_pages_inside_the_file(memory: PhysicalMemory) -> None:
    cfile = _cfile(memory, 3 * PAGE_SIZE)
    copy = FilePage(0x2000, None, ((8, 0, 0, 512),))
    cfile.pages = _table({
        0: FilePage(0x1000, 100),
        1: copy,
        2: FilePage(0x3000, 108),
        5: FilePage(0x4000, 120),  # past the end: no clusters behind it
    })
    core.mark_dirty(cfile, [0, 1, 5, 9])
    assert cfile.modified
    marked, private = core.writeback_plan(cfile)
    assert marked == [100]
    assert private == [copy] and cfile.pages.get(1) is copy
    assert not any(fl & DIRTY for *_, fl in cfile.pages.pieces())
    assert core.writeback_plan(cfile) == ([], [])


def test_shrink_and_give_back_choose_their_pages(memory: PhysicalMemory) -> None:
    cfile = _cfile(memory, 10 * PAGE_SIZE)
    window = _window(memory, cfile, OpenFlags.READ)
    core.opened(window)
    cfile.pages = _table({p: FilePage(0x1000 * (p + 1), 8 * p) for p in range(6)})
    assert len(cfile.pages.first) == 1  # one run: consecutive in frames and on the disk
    core.record_mapping(window, 0, 2, 1)
    core.record_mapping(window, 4, 2, 2)
    assert core.parts_reaching(window, 3 * PAGE_SIZE + 1) == [2]
    assert core.drop_spans(cfile, core.pages_from(cfile, 3 * PAGE_SIZE + 1)) == (
        [PageSpan(32, 2)], []
    )
    assert core.idle_spans(cfile) == [(2, 4)] and core.idle_pages(cfile) == [2, 3]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=60))
def test_runs_are_sorted_maximal_and_complete(pages: list[int]) -> None:
    runs = core.runs(set(pages))
    assert sorted(p for run in runs for p in run) == sorted(set(pages))
    for run in runs:
        assert run == list(range(run[0], run[0] + len(run)))
    for a, b in itertools.pairwise(runs):
        assert b[0] > a[-1] + 1


def test_a_closed_address_space_refuses_mappings(memory: PhysicalMemory) -> None:
    (frame,) = memory.alloc("t", 1)
    for space in (
        make_address_space(memory, 4 * PAGE_SIZE),
        StitchedAddressSpace(memory, 4 * PAGE_SIZE),
    ):
        space.map(0, [frame], writable=False)
        space.close()
        with pytest.raises(BadAddress):
            space.map(PAGE_SIZE, [frame], writable=False)


def test_data_follows_the_dirty_map_in_the_window() -> None:
    assert DIRTY_OFFSET == 3 * PAGE_SIZE
    assert DATA_OFFSET == DIRTY_OFFSET + (1 << 31) // PAGE_SIZE
    assert DATA_OFFSET % PAGE_SIZE == 0


# ------------------------------------------------------------- kept pages (§6)
def _record(key: int, pages: int, size: int | None = None) -> core.RetainedFile:
    fps = _table({p: FilePage(0x1000 * (p + 1), 8 * p) for p in range(pages)})
    native: dict[str, str | int] = {"first_cluster": key}
    return core.RetainedFile(("fat0", key), f"f{key}", size or pages * PAGE_SIZE, native, fps)


def test_kept_files_are_an_lru_bounded_by_files_and_pages() -> None:
    kept = core.RetainedFiles(max_files=3, max_pages=10)
    assert kept.put(_record(1, 4)) == [] and kept.put(_record(2, 4)) == []
    assert [r.key[1] for r in kept.put(_record(3, 4))] == [1]  # 12 pages > 10: the oldest goes
    assert kept.pages == 8 and list(kept.records) == [("fat0", 2), ("fat0", 3)]
    assert [r.key[1] for r in kept.put(_record(4, 11))] == [4]  # larger than all: not kept
    assert [r.key[1] for r in kept.put(_record(2, 1))] == [2]  # a new record replaces the old
    assert kept.pages == 5 and list(kept.records)[-1] == ("fat0", 2)
    assert kept.put(_record(5, 1)) == [] and [r.key[1] for r in kept.put(_record(6, 1))] == [3]
    assert len(kept) == 3 and kept.pages == 3
    assert [r.key[1] for r in kept.oldest(2)] == [2, 5] and kept.pages == 1
    taken = kept.take(("fat0", 6))
    assert taken is not None and kept.pages == 0 and kept.take(("fat0", 6)) is None


def test_kept_files_past_the_bound_go_a_sixteenth_at_once() -> None:
    """Reading many small files: one Release per 16 closes past the bound, not one each."""
    kept = core.RetainedFiles(max_files=32, max_pages=1000)
    for key in range(32):
        assert kept.put(_record(key, 1)) == []
    assert [r.key[1] for r in kept.put(_record(32, 1))] == [0, 1, 2]  # down to 30
    assert len(kept) == 30
    assert kept.put(_record(33, 1)) == [] and kept.put(_record(34, 1)) == []


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), max_size=40))
@settings(max_examples=60, deadline=None)
def test_kept_pages_are_counted_exactly(ops: list[tuple[int, int]]) -> None:
    kept = core.RetainedFiles(max_files=4, max_pages=9)
    out = 0
    for key, pages in ops:
        if pages == 0:
            out += len(kept.oldest(key))
        else:
            out += len(kept.put(_record(key, pages)))
        assert kept.pages == sum(len(r.pages) for r in kept.records.values()) <= 9
        assert len(kept.records) <= 4


def test_a_kept_record_matches_only_the_same_size_and_native_facts() -> None:
    record = _record(3, 2, size=5000)
    info = FsInfo("f3", 0x20, 5000, 8192, False, 0.0, 0.0, 0.0, 3, {"first_cluster": 3})
    assert record.matches(info)
    assert not record.matches(msgspec.structs.replace(info, size=5001))
    assert not record.matches(msgspec.structs.replace(info, native={"first_cluster": 9}))
    assert not record.matches(msgspec.structs.replace(info, is_dir=True))


def test_an_unlinked_name_drops_its_kept_records() -> None:
    kept = core.RetainedFiles()
    kept.put(_record(1, 1))
    kept.put(_record(2, 1))
    assert [r.key for r in kept.named("fat0", "F1")] == [("fat0", 1)]  # any case
    assert kept.named("fat1", "f2") == [] and list(kept.records) == [("fat0", 2)]


def test_a_closing_file_keeps_clean_cache_pages_inside_its_size(memory: PhysicalMemory) -> None:
    cfile = _cfile(memory, 3 * PAGE_SIZE + 10)
    cfile.pages = _table({
        0: FilePage(0x10000, 0),
        1: FilePage(0x11000, None),  # a private copy: charged to a process, not kept
        2: FilePage(0x12000, 16, dirty=True),
        3: FilePage(0x13000, 24),
        4: FilePage(0x14000, 32),  # past the size: a reservation freed at close
    })
    kept = core.take_retained(cfile, PAGE_SIZE)
    assert list(kept) == [0, 3] and list(cfile.pages) == [1, 2, 4]
    assert kept.phys_of(3) == 0x13000 and 1 in cfile.pages.copies


def test_a_closing_file_keeps_no_page_its_clusters_end_inside(memory: PhysicalMemory) -> None:
    """2 KiB clusters: a 9000-byte file keeps 5 clusters (10240 bytes) once its reservation
    goes back; page 2 (8192..12288) would map a freed cluster, so it is not kept."""
    cfile = _cfile(memory, 9000)
    cfile.pages = _table({p: FilePage(0x10000 + p * PAGE_SIZE, 8 * p) for p in range(4)})
    kept = core.take_retained(cfile, 2048)
    assert list(kept) == [0, 1] and list(cfile.pages) == [2, 3]


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 1 << 20), shift=st.integers(9, 16))
def test_whole_pages_lie_in_the_files_clusters(size: int, shift: int) -> None:
    """Every page below the bound lies in the clusters a file of the size keeps, and the
    bound is the largest such, up to the pages of the size."""
    cluster = 1 << shift
    clusters_end = -(-size // cluster) * cluster
    n = core.whole_pages(size, cluster)
    assert n * PAGE_SIZE <= clusters_end and n <= core.pages_of(size)
    assert n == core.pages_of(size) or (n + 1) * PAGE_SIZE > clusters_end


def test_an_open_maps_cached_pages_or_a_small_file_whole(memory: PhysicalMemory) -> None:
    small = _cfile(memory, core.SMALL_FILE_PAGES * PAGE_SIZE)
    assert core.up_front_pages(small) == list(range(core.SMALL_FILE_PAGES))
    big = _cfile(memory, (core.SMALL_FILE_PAGES + 1) * PAGE_SIZE)
    assert core.up_front_pages(big) == []  # the first read's miss sizes the part
    big.pages = _table({p: FilePage(0x1000 * (p + 1), 8 * p) for p in (0, 1, 5)})
    assert core.up_front_pages(big) == [0, 1, 5]
    scattered = range(0, 4 * core.UP_FRONT_RUNS, 2)
    big.pages = _table({p: FilePage(0x1000 * (p + 1), 8 * p) for p in scattered})
    big.info = _info(4 * core.UP_FRONT_RUNS * PAGE_SIZE)
    assert core.up_front_pages(big) == list(scattered)[: core.UP_FRONT_RUNS]  # 16 runs at most
    assert core.up_front_pages(_cfile(memory, 0)) == []


# ----------------------------------------------------------- the page table as runs
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "private", "remove", "dirty", "clean"]),
        st.integers(0, 40),
        st.integers(1, 12),
        st.integers(0, 3),
    ),
    max_size=30,
)


@settings(max_examples=80, deadline=None)
@given(_OPS)
def test_the_page_table_holds_exactly_what_a_page_dict_would(
    ops: list[tuple[str, int, int, int]],
) -> None:
    """Runs put, removed, made dirty and clean in any order: every page reads as a
    per-page model says, the count is exact, runs are sorted and maximal (two
    neighbours that continue each other with the same flags are one run)."""
    table = FilePages()
    model: dict[int, tuple[int, int, int]] = {}  # page -> (frame, cache page or -1, flags)
    for op, lo, n, salt in ops:
        hi = lo + n
        base = 0x100000 * (salt + 1)
        if op == "put":
            table.put(lo, n, base + lo * PAGE_SIZE, 800 * salt + 8 * lo, 8)
            model.update({p: (base + p * PAGE_SIZE, 800 * salt + 8 * p, 0) for p in range(lo, hi)})
        elif op == "private":
            table.put_private(lo, FilePage(base + lo * PAGE_SIZE, None))
            model[lo] = (base + lo * PAGE_SIZE, -1, PRIVATE)
        elif op == "remove":
            removed = table.remove(lo, hi)
            assert sum(b - a for a, b, *_ in removed) == sum(lo <= p < hi for p in model)
            model = {p: v for p, v in model.items() if not lo <= p < hi}
        else:
            add, drop = (DIRTY, 0) if op == "dirty" else (0, DIRTY)
            table.change(lo, hi, add=add, drop=drop)
            for p in range(lo, hi):
                if p in model:
                    phys, lba, fl = model[p]
                    model[p] = (phys, lba, (fl | add) & ~drop)
        assert len(table) == len(model) and list(table) == sorted(model)
        for p in range(0, 60):
            fp = table.get(p)
            if p not in model:
                assert fp is None and p not in table and table.phys_of(p) == -1
                continue
            phys, lba, fl = model[p]
            assert fp is not None and fp.phys == phys == table.phys_of(p)
            assert fp.cache_lba == (None if fl & PRIVATE else lba)
            assert fl & PRIVATE or fp.dirty == bool(fl & DIRTY)
        assert set(table.copies) == {p for p, v in model.items() if v[2] & PRIVATE}
        pieces = table.pieces()
        for (a1, b1, f1, l1, g1), (a2, _, f2, l2, g2) in itertools.pairwise(pieces):
            assert b1 <= a2
            continues = b1 == a2 and g1 == g2 and f2 == f1 + (b1 - a1) * PAGE_SIZE
            assert not (continues and (g1 & PRIVATE or l2 == l1 + (b1 - a1) * 8))
        assert table.gaps(0, 60) == [
            (a, b) for a, b in core.merged_spans((p, p + 1) for p in range(60) if p not in model)
        ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 15)), max_size=25))
def test_mapping_serials_are_the_latest_per_page(maps: list[tuple[int, int]]) -> None:
    serials = PageSerials()
    model: dict[int, int] = {}
    for serial, (lo, n) in enumerate(maps, 1):
        serials.assign(lo, lo + n, serial)
        model.update(dict.fromkeys(range(lo, lo + n), serial))
        got = {p: s for a, b, s in serials.pieces(0, 80) for p in range(a, b)}
        assert got == model
        assert list(serials.first) == sorted(serials.first)
