"""The FileMap: the 4 KiB control block a process searches to find its mapped file parts.

The kernel file driver owns one FileMap per (process, open file). It lives in shared
memory; the process maps it read-only and searches it itself, so a read of data that is
already mapped costs no system call. The kernel updates it without ever taking a lock,
so every update is a sequence of single aligned stores ordered such that a reader running
concurrently sees a stale-but-valid part or a miss, never a wrong mapping (``docs/architecture.md`` §5).

Layout (exactly 4096 bytes, little-endian)::

    offset  size  type          field
    ------  ----  ------------  ----------------------------------------------------
         0   512  int16[256]    sorted: 1-based part index, 0 = empty; ordered by the
                                part's position. Slots 224..255 are always 0, so an
                                8-step binary search (256 = 2**8) covers the array.
       512  3584  part[224]     16 bytes each, part index i lives at 512 + 16 * (i - 1):
                  +0 int64      position  file position of the part's first byte
                  +8 int32      size      bytes in the part (0 = cleared entry)
                 +12 int32      base      offset of the part's first byte within the
                                          process's file window (its linear mapping)

Update protocol (the kernel is the only writer):

- **insert**: write the part entry (position, base, then size); shift the used slots one
  up starting from the top, so a reader sees a duplicate and never a gap; store the new
  slot last, which is the moment the part becomes visible.
- **remove**: overwrite the removed slot with its successor, from the bottom up (again
  duplicates, never gaps), then zero the last used slot. The entry is left intact: a
  reader that already picked the slot may still be reading it.
- **clear** (``clear_part``), only after a grace period longer than any reader's
  "prompt" use: size then base go to zero; the index is then free for reuse.

A miss does not prove the part is absent: a search racing a shift can step past a part
that stays linked throughout (the interleaving tests see it happen). The library then
asks the kernel (``CachePart``), which answers at once for a range already mapped.

Every update is planned (``filemap_writer.py``) as a list of :class:`Store` steps, and the
same list is applied for real and by the interleaving explorer in the tests. The reader
exists twice: :meth:`FileMapReader.find` is the fast path, :func:`lookup_steps` the same
search as a generator that yields one :class:`Load` per memory load.

Typed stores and loads go through ``memoryview.cast`` views: CPython copies a cast item
with a fixed-size ``memcpy``, which compiles to one aligned load or store, so a concurrent
process never sees a torn int16/int32/int64.
"""

from __future__ import annotations

import errno
import struct
import sys
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12 on

if sys.byteorder != "little":  # pragma: no cover - the project targets x86-64/aarch64
    raise ImportError(
        "servers.vfs.filemap uses native memoryview casts and needs a little-endian host"
    )

FILEMAP_SIZE: Final = 4096
SORTED_OFFSET: Final = 0
SORTED_SLOTS: Final = 256
SLOT_WIDTH: Final = 2
MAX_PARTS: Final = 224
PARTS_OFFSET: Final = 512
PART_SIZE: Final = 16
PART_FORMAT: Final = "<qii"  # position, size, base
SORTED_FORMAT: Final = "<256h"
SEARCH_STEPS: Final = (128, 64, 32, 16, 8, 4, 2, 1)

INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1
WINDOW_LIMIT: Final = 2**31  # a part must end inside the int32 window: base + size <= this

_PART_STRUCT: Final = struct.Struct(PART_FORMAT)
assert PARTS_OFFSET + MAX_PARTS * PART_SIZE == FILEMAP_SIZE
assert SORTED_SLOTS * SLOT_WIDTH == PARTS_OFFSET


class FileMapError(OSError):
    """Base of the FileMap errors; an OSError so it crosses IPC as an errno."""


class FileMapFull(FileMapError):
    """Every one of the 224 part indexes is linked or still waiting for its grace period."""


class PartOverlap(FileMapError):
    """The new part overlaps a part that is still linked."""


class InvalidPart(FileMapError):
    """A part's range is out of bounds, or an index is not in the state the call needs."""


class FileMapCorrupt(FileMapError):
    """A buffer handed to the writer breaks the FileMap invariants."""


class Part(NamedTuple):
    """One mapped run of the file: ``size`` bytes at ``position``, at ``base`` in the window."""

    position: int
    size: int
    base: int

    @property
    def end(self) -> int:
        """First file position after the part."""
        return self.position + self.size

    def contains(self, file_position: int) -> bool:
        """True when the file position falls inside the part (never for a cleared entry)."""
        return self.position <= file_position < self.position + self.size


class Store(NamedTuple):
    """One aligned little-endian store of ``width`` (2, 4 or 8) bytes: a step of an update."""

    offset: int
    width: int
    value: int

    @property
    def data(self) -> bytes:
        """The bytes the store writes, as ``(offset, data)`` would describe it."""
        return self.value.to_bytes(self.width, "little", signed=True)


class Load(NamedTuple):
    """One aligned little-endian signed load a reader performs: a step of a lookup."""

    offset: int
    width: int


def slot_offset(slot: int) -> int:
    """Byte offset of sorted slot ``slot`` (0-based)."""
    return SORTED_OFFSET + SLOT_WIDTH * slot


def part_offset(index: int) -> int:
    """Byte offset of the entry of 1-based part ``index``."""
    return PARTS_OFFSET + PART_SIZE * (index - 1)


def position_offset(index: int) -> int:
    """Byte offset of the int64 position of part ``index``."""
    return part_offset(index)


def size_offset(index: int) -> int:
    """Byte offset of the int32 size of part ``index``."""
    return part_offset(index) + 8


def base_offset(index: int) -> int:
    """Byte offset of the int32 base of part ``index``."""
    return part_offset(index) + 12


class Words:
    """Typed int16/int32/int64 views over one 4 KiB page, created once and reused.

    Holding the cast views avoids building memoryviews per access; ``release`` lets the
    owner close the underlying mmap afterwards.
    """

    __slots__ = ("h", "i", "q", "raw")

    def __init__(self, buf: Buffer, *, writable: bool = False) -> None:
        raw = memoryview(buf).cast("B")
        size = raw.nbytes
        if size != FILEMAP_SIZE:
            raw.release()
            raise InvalidPart(errno.EINVAL, f"a control page is {FILEMAP_SIZE} bytes, got {size}")
        if writable and raw.readonly:
            raw.release()
            raise InvalidPart(errno.EROFS, "the kernel side needs a writable control page")
        self.raw = raw
        self.h = raw.cast("h")
        self.i = raw.cast("i")
        self.q = raw.cast("q")

    def load(self, offset: int, width: int) -> int:
        """One aligned signed load."""
        if width == 2:
            return int(self.h[offset >> 1])
        if width == 4:
            return int(self.i[offset >> 2])
        return int(self.q[offset >> 3])

    def store(self, step: Store) -> None:
        """One aligned signed store."""
        if step.width == 2:
            self.h[step.offset >> 1] = step.value
        elif step.width == 4:
            self.i[step.offset >> 2] = step.value
        else:
            self.q[step.offset >> 3] = step.value

    def release(self) -> None:
        """Drop the views so the underlying buffer (an mmap) can be closed."""
        for view in (self.h, self.i, self.q, self.raw):
            view.release()


def check_part(position: int, size: int, base: int) -> None:
    """Reject parts the layout cannot hold or that would leave the process's window."""
    if not 0 < size <= INT32_MAX:
        raise InvalidPart(errno.EINVAL, f"part size {size} is not in 1..{INT32_MAX}")
    if not 0 <= position <= INT64_MAX - size:
        raise InvalidPart(
            errno.EINVAL, f"part position {position} (+{size}) leaves the int64 file range"
        )
    if not 0 <= base <= WINDOW_LIMIT - size:
        raise InvalidPart(errno.EINVAL, f"part base {base} (+{size}) leaves the int32 window")


# ---------------------------------------------------------------------------------------
# The user side: no system call, only loads.


class FileMapReader:
    """A process's reader over its read-only FileMap page; holds typed views for speed."""

    __slots__ = ("_words",)

    def __init__(self, buf: Buffer) -> None:
        self._words = Words(buf)

    def find(self, file_position: int) -> tuple[int, Part] | None:
        """Find the part holding ``file_position``; returns ``(index, part)`` or None.

        An 8-step binary search for the last slot whose part starts at or before the
        position (an empty slot counts as +infinity), then the range check. The loads are
        exactly those of :func:`lookup_steps`, in the same order.
        """
        slots = self._words.h
        quads = self._words.q
        at = -1
        found = 0
        start = 0
        for step in SEARCH_STEPS:
            index = slots[at + step]
            if 0 < index <= MAX_PARTS:
                begin = quads[(PARTS_OFFSET >> 3) + 2 * index - 2]
                if begin <= file_position:
                    at += step
                    found = index
                    start = begin
        if not found:
            return None
        ints = self._words.i
        size = ints[(PARTS_OFFSET >> 2) + 4 * found - 2]
        base = ints[(PARTS_OFFSET >> 2) + 4 * found - 1]
        if file_position - start >= size:
            return None
        return found, Part(start, size, base)

    def still(self, index: int, position: int, size: int) -> bool:
        """Whether entry ``index`` still describes the part a recent ``find`` returned.

        Two loads instead of a search, for a reader that remembers its last part. As
        safe as a search landing on that entry: a removed part's entry stays readable
        until the grace period ends, then its size is cleared (so this says no), and
        the index is reused only after that.
        """
        ints = self._words.i
        if ints[(PARTS_OFFSET >> 2) + 4 * index - 2] != size:
            return False
        return bool(self._words.q[(PARTS_OFFSET >> 3) + 2 * index - 2] == position)

    def lookup(self, file_position: int) -> Part | None:
        """The part holding ``file_position``, or None (a miss: ask the kernel)."""
        hit = self.find(file_position)
        return None if hit is None else hit[1]

    def release(self) -> None:
        """Drop the views over the page."""
        self._words.release()


def lookup(buf: Buffer, file_position: int) -> Part | None:
    """One-shot lookup over a FileMap buffer (keep a :class:`FileMapReader` for many)."""
    reader = FileMapReader(buf)
    try:
        return reader.lookup(file_position)
    finally:
        reader.release()


def lookup_steps(file_position: int) -> Generator[Load, int, tuple[int, Part] | None]:
    """The reader's search as a sans-I/O generator: yields each load, is sent its value.

    Returns ``(index, part)`` or None, exactly as :meth:`FileMapReader.find` would for
    the same sequence of loaded values.
    """
    at = -1
    found = 0
    start = 0
    for step in SEARCH_STEPS:
        index = yield Load(slot_offset(at + step), SLOT_WIDTH)
        if 0 < index <= MAX_PARTS:
            begin = yield Load(position_offset(index), 8)
            if begin <= file_position:
                at += step
                found = index
                start = begin
    if not found:
        return None
    size = yield Load(size_offset(found), 4)
    base = yield Load(base_offset(found), 4)
    if file_position - start >= size:
        return None
    return found, Part(start, size, base)


def run_lookup_steps(buf: Buffer, file_position: int) -> tuple[int, Part] | None:
    """Drive :func:`lookup_steps` against a quiescent buffer (for tests and tools)."""
    words = Words(buf)
    steps = lookup_steps(file_position)
    try:
        request = next(steps)
        while True:
            request = steps.send(words.load(request.offset, request.width))
    except StopIteration as done:
        result: tuple[int, Part] | None = done.value
        return result
    finally:
        words.release()


# ---------------------------------------------------------------------------------------
# Helpers over a quiescent page.


def read_part(buf: Buffer, index: int) -> Part:
    """The raw entry of part ``index`` (linked, retired, cleared or never used)."""
    if not 0 < index <= MAX_PARTS:
        raise InvalidPart(errno.EINVAL, f"part index {index} is not in 1..{MAX_PARTS}")
    position, size, base = _PART_STRUCT.unpack_from(buf, part_offset(index))
    return Part(position, size, base)


def sorted_slots(buf: Buffer) -> tuple[int, ...]:
    """All 256 sorted slots."""
    return struct.unpack_from(SORTED_FORMAT, buf, SORTED_OFFSET)


def iter_parts(buf: Buffer) -> Iterator[tuple[int, Part]]:
    """Linked parts as ``(index, part)`` in slot order, stopping at the first empty slot."""
    for index in sorted_slots(buf)[:MAX_PARTS]:
        if index == 0:
            return
        yield index, read_part(buf, index)


def count_parts(buf: Buffer) -> int:
    """Number of used slots."""
    return sum(1 for _ in iter_parts(buf))


def as_bytes(buf: Buffer) -> bytes:
    """A snapshot copy of the page."""
    return bytes(memoryview(buf).cast("B"))


def check_filemap(buf: Buffer) -> list[tuple[int, Part]]:
    """Validate a quiescent FileMap and return its linked parts; raises FileMapCorrupt.

    Checks: slots are a prefix of distinct valid indexes followed only by zeros, linked
    entries have a sane range, positions strictly increase and parts do not overlap.
    """
    slots = sorted_slots(buf)
    used = next((n for n, index in enumerate(slots) if index == 0), SORTED_SLOTS)
    if used > MAX_PARTS or any(slots[used:]):
        raise FileMapCorrupt(errno.EUCLEAN, "non-zero sorted slot after the first empty one")
    if len(set(slots[:used])) != used or not all(0 < i <= MAX_PARTS for i in slots[:used]):
        raise FileMapCorrupt(errno.EUCLEAN, "sorted slots hold duplicate or out-of-range indexes")
    linked = [(index, read_part(buf, index)) for index in slots[:used]]
    previous_end = -1
    for index, part in linked:
        try:
            check_part(*part)
        except InvalidPart as err:
            raise FileMapCorrupt(errno.EUCLEAN, f"part {index}: {err.strerror}") from None
        if part.position < previous_end:
            raise FileMapCorrupt(errno.EUCLEAN, f"part {index} is out of order or overlaps")
        previous_end = part.end
    return linked
