"""FileMap byte layout, writer bookkeeping and errors, and a model check of random updates."""

from __future__ import annotations

import errno
import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.vfs import filemap as fm
from servers.vfs.filemap import (
    FileMapCorrupt,
    FileMapFull,
    FileMapReader,
    InvalidPart,
    Part,
    PartOverlap,
    Store,
    check_filemap,
    iter_parts,
    lookup,
    run_lookup_steps,
)
from servers.vfs.filemap_writer import FileMapWriter


def new_page() -> bytearray:
    """A zeroed FileMap page."""
    return bytearray(fm.FILEMAP_SIZE)


# ---------------------------------------------------------------------------------------
# Layout


def test_layout_constants() -> None:
    """4096 bytes: 256 int16 slots at 0, then 224 parts of 16 bytes at 512."""
    assert fm.FILEMAP_SIZE == 4096
    assert struct.calcsize(fm.SORTED_FORMAT) == 512 == fm.PARTS_OFFSET
    assert struct.calcsize(fm.PART_FORMAT) == 16 == fm.PART_SIZE
    assert fm.PARTS_OFFSET + fm.MAX_PARTS * fm.PART_SIZE == 4096
    assert tuple(2**k for k in range(7, -1, -1)) == fm.SEARCH_STEPS
    assert (fm.slot_offset(0), fm.slot_offset(255)) == (0, 510)
    assert (fm.part_offset(1), fm.part_offset(224)) == (512, 4080)
    assert (fm.position_offset(3), fm.size_offset(3), fm.base_offset(3)) == (544, 552, 556)


def test_bytes_written_match_the_documented_layout() -> None:
    """Entries and slots land at their offsets, little-endian, with the high slots zero."""
    page = new_page()
    writer = FileMapWriter(page)
    first = writer.insert(0x1_0000_0000, 0x3000, 0x2000)
    second = writer.insert(4096, 8192, 0)
    assert (first, second) == (1, 2)
    assert struct.unpack_from("<qii", page, 512) == (0x1_0000_0000, 0x3000, 0x2000)
    assert struct.unpack_from("<qii", page, 528) == (4096, 8192, 0)
    assert page[512:520] == (0x1_0000_0000).to_bytes(8, "little")
    assert struct.unpack_from("<3h", page, 0) == (2, 1, 0)
    assert not any(page[2 * 224 : 512])
    assert Store(6, 2, 0x0102).data == b"\x02\x01"


def test_the_step_wise_reader_loads_eight_slots_on_an_empty_map() -> None:
    """An 8-step search: on an empty map the reader loads exactly 8 slots, then misses."""
    steps = fm.lookup_steps(123)
    loads = [next(steps)]
    with pytest.raises(StopIteration) as done:
        while True:
            loads.append(steps.send(0))
    assert done.value.value is None
    assert [load.offset // 2 for load in loads] == [127, 63, 31, 15, 7, 3, 1, 0]
    assert all(load.width == 2 for load in loads)


def test_works_over_a_shared_mmap_and_a_read_only_view() -> None:
    """The kernel writes a real mmap page; the process reads it through a read-only view."""
    page = mmap.mmap(-1, fm.FILEMAP_SIZE)
    writer = FileMapWriter(page)
    writer.insert(8192, 4096, 12288)
    view = memoryview(page).toreadonly()
    assert lookup(view, 8192 + 4095) == Part(8192, 4096, 12288)
    with pytest.raises(InvalidPart) as err:
        FileMapWriter(view)
    assert err.value.errno == errno.EROFS
    writer.release()
    view.release()
    page.close()


# ---------------------------------------------------------------------------------------
# Writer errors and bookkeeping


def test_a_page_of_the_wrong_size_is_refused() -> None:
    """Both sides insist on exactly one 4 KiB page."""
    for size in (0, 4095, 4097, 8192):
        with pytest.raises(InvalidPart) as err:
            FileMapWriter(bytearray(size))
        assert err.value.errno == errno.EINVAL
        with pytest.raises(InvalidPart):
            FileMapReader(bytes(size))


def test_overlap_and_range_errors_are_typed() -> None:
    """Overlapping or out-of-range parts are refused with OSError subclasses."""
    writer = FileMapWriter(new_page())
    writer.insert(100, 100, 0)
    for position, size in [(150, 10), (50, 51), (199, 5), (0, 1000)]:
        with pytest.raises(PartOverlap) as err:
            writer.insert(position, size, 0)
        assert err.value.errno == errno.EEXIST
    writer.insert(200, 1, 0)  # touching is fine
    writer.insert(99, 1, 0)
    for position, size, base in [(0, 0, 0), (-1, 1, 0), (300, 1, -1), (300, 2, 2**31 - 1)]:
        with pytest.raises(InvalidPart):
            writer.insert(position, size, base)
    with pytest.raises(InvalidPart):
        writer.remove(99)
    assert isinstance(PartOverlap(errno.EEXIST, "x"), OSError)


def test_full_map_and_the_grace_period() -> None:
    """224 parts fill the map; a removed index is reusable only once it is cleared."""
    page = new_page()
    writer = FileMapWriter(page)
    indexes = [writer.insert(10 * n, 10, 0) for n in range(fm.MAX_PARTS)]
    assert sorted(indexes) == list(range(1, 225))
    assert fm.count_parts(page) == 224
    assert not any(page[448:512])  # slots 224..255 stay zero even when full
    with pytest.raises(FileMapFull) as err:
        writer.insert(10_000, 10, 0)
    assert err.value.errno == errno.ENOSPC
    removed = writer.remove(indexes[5])
    assert removed == Part(50, 10, 0)
    with pytest.raises(FileMapFull):
        writer.insert(10_000, 10, 0)  # still in its grace period
    assert fm.read_part(page, indexes[5]) == removed
    writer.clear_part(indexes[5])
    assert fm.read_part(page, indexes[5]) == Part(50, 0, 0)
    assert writer.insert(10_000, 10, 0) == indexes[5]
    with pytest.raises(InvalidPart):
        writer.clear_part(indexes[5])


def test_a_writer_adopts_an_existing_page() -> None:
    """Linked parts, retired entries and free indexes are recovered from the bytes."""
    page = new_page()
    first = FileMapWriter(page)
    a = first.insert(0, 10, 0)
    b = first.insert(100, 10, 16)
    c = first.insert(50, 10, 32)
    first.remove(b)
    first.release()
    second = FileMapWriter(page)
    assert list(second.parts()) == [(a, Part(0, 10, 0)), (c, Part(50, 10, 32))]
    assert second.retired == {b}
    assert second.free_count == fm.MAX_PARTS - 3
    assert second.insert(200, 1, 0) == 4


def test_a_corrupt_page_is_refused() -> None:
    """Unsorted, duplicated or gapped slot arrays are reported, not adopted."""
    bad_pages = []
    page = new_page()
    writer = FileMapWriter(page)
    writer.insert(0, 10, 0)
    writer.insert(100, 10, 0)
    swapped = bytearray(page)
    swapped[0:4] = page[2:4] + page[0:2]
    bad_pages.append(swapped)
    gapped = bytearray(page)
    gapped[2:6] = b"\x00\x00" + page[2:4]
    bad_pages.append(gapped)
    duplicate = bytearray(page)
    duplicate[2:4] = page[0:2]
    bad_pages.append(duplicate)
    high = new_page()
    high[300:302] = b"\x01\x00"
    bad_pages.append(high)
    for bad in bad_pages:
        with pytest.raises(FileMapCorrupt):
            check_filemap(bad)
        with pytest.raises(FileMapCorrupt):
            FileMapWriter(bad)


def test_reader_ignores_garbage_indexes() -> None:
    """A slot naming no valid part is treated as empty, never dereferenced."""
    page = new_page()
    struct.pack_into("<h", page, 0, -3)
    struct.pack_into("<h", page, 2, 300)
    assert lookup(page, 0) is None
    assert run_lookup_steps(page, 0) is None


# ---------------------------------------------------------------------------------------
# Random updates against a model

UNIT = 512

operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(0, 300), st.integers(1, 12)),
        st.tuples(st.just("remove"), st.integers(0, 300), st.just(0)),
        st.tuples(st.just("clear"), st.integers(0, 300), st.just(0)),
    ),
    max_size=120,
)


class Model:
    """The obvious map: linked parts by index, plus retired indexes."""

    def __init__(self) -> None:
        self.linked: dict[int, Part] = {}
        self.retired: dict[int, Part] = {}

    def overlaps(self, part: Part) -> bool:
        return any(p.position < part.end and part.position < p.end for p in self.linked.values())

    def find(self, position: int) -> tuple[int, Part] | None:
        return next(((i, p) for i, p in self.linked.items() if p.contains(position)), None)


def apply(writer: FileMapWriter, model: Model, op: str, a: int, b: int) -> None:
    """Apply one random operation to both, expecting the typed errors where due."""
    if op == "insert":
        part = Part(a * UNIT, b * UNIT, a * 16 + b)
        if model.overlaps(part):
            with pytest.raises(PartOverlap):
                writer.insert(*part)
        elif len(model.linked) + len(model.retired) == fm.MAX_PARTS:
            with pytest.raises(FileMapFull):
                writer.insert(*part)
        else:
            index = writer.insert(*part)
            assert index not in model.linked and index not in model.retired
            model.linked[index] = part
    elif op == "remove" and model.linked:
        index = sorted(model.linked)[a % len(model.linked)]
        writer.remove(index)
        model.retired[index] = model.linked.pop(index)
    elif op == "clear" and model.retired:
        index = sorted(model.retired)[a % len(model.retired)]
        writer.clear_part(index)
        del model.retired[index]


def assert_agrees(page: bytearray, reader: FileMapReader, model: Model) -> None:
    """Sorted order, entries and lookups all match the model."""
    linked = check_filemap(page)
    assert linked == sorted(model.linked.items(), key=lambda item: item[1].position)
    assert list(iter_parts(page)) == linked
    probes = {0, 10**6}
    for part in model.linked.values():
        probes.update((part.position - 1, part.position, part.end - 1, part.end))
    for position in probes:
        expected = model.find(position)
        assert reader.find(position) == expected
        assert run_lookup_steps(page, position) == expected


@settings(max_examples=150, deadline=None)
@given(operations)
def test_random_updates_keep_order_and_lookups_agree(ops: list[tuple[str, int, int]]) -> None:
    """Random inserts, removes and clears keep the slots sorted and lookups exact."""
    page = new_page()
    writer = FileMapWriter(page)
    reader = FileMapReader(page)
    model = Model()
    for op, a, b in ops:
        apply(writer, model, op, a, b)
        assert_agrees(page, reader, model)
    assert writer.count == len(model.linked)
    assert writer.retired == set(model.retired)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(1, 2**20)), max_size=224))
def test_lookup_agrees_with_model_on_dense_maps(raw: list[tuple[int, int]]) -> None:
    """Maps up to full size, with large positions, answer every boundary probe exactly."""
    page = new_page()
    writer = FileMapWriter(page)
    model = Model()
    for position, size in raw:
        part = Part(position, size, 0)
        if not model.overlaps(part):
            model.linked[writer.insert(*part)] = part
    assert_agrees(page, FileMapReader(page), model)
