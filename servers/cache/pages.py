"""The pure core of the disc cache: page states, runs, pins, loads and the clock.

No awaits and no I/O (h11 style): the server shell asks this core what to do,
performs the driver commands and memory operations, and reports the outcome
back. That keeps every rule below testable without a router.

**Runs, not page records.** A device's resident pages are a sorted table of
runs (first page, count, first frame): consecutive pages held by consecutive
frames (:class:`RunTable`, three ``array`` columns). Everything the cache knows
about one page lives in one byte per frame (state, dirty, referenced,
zero-on-arrival) plus one pin-count byte per holder, in ``bytearray`` columns
indexed by frame; there is no Python object per page, so a big read creates no
garbage for the collector and costs a few bytes of heap per cached page
(:meth:`PageCache.heap_bytes`). Operations work on whole runs at once with
``bytes.translate`` and slice assignment; a page whose state differs from its
neighbours' is still exact, because the state is per frame.

A page of a device is in one of four states; ``ABSENT`` pages are not in the table::

    ABSENT --LOAD--> READING --LOADED--> PRESENT --WRITE--> WRITING --WRITTEN--> PRESENT
       |               `--LOAD_FAILED--> ABSENT              `--WRITE_FAILED--> PRESENT (dirty)
       `--ZERO_FILL--> PRESENT --EVICT / DISCARD--> ABSENT

The table (:data:`TRANSITIONS`) is compiled into one 256-byte translation per
event (:data:`EVENT_TABLES`): firing an event on a run is one ``translate``,
and a page for which the event is not allowed comes out as ``ILLEGAL``, a typed
error. ``dirty`` is a bit beside the state: ``WRITE`` clears it, so a page
changed while its write is in flight (``MarkDirty`` during ``WRITING``) stays
dirty after ``WRITTEN`` and is written again.

Loads: the pages a request must read are cut into :class:`Load` records, one
per driver command (contiguous on the disk *and* in frames, at most the
driver's limit): one ``preadv`` into one frame run. A request waiting for pages
another request is reading joins that load's waiters.

Pins: every page handed to a receiver (``SectorsReady``/``Pages``) carries one
pin for it, taken when the request is *admitted*. Each pin is recorded for its
*holder* (the port the pages go to), and only that holder may release it: a
``Release`` naming pins the sender does not hold is refused for those pins
(``NotPinHolder``). Counts above 254 spill into a small dict, so they are exact.

Replacement is second chance (the clock) over the frames of unpinned
``PRESENT`` pages: a referenced page loses its bit and survives one more round,
a dirty page is reported so the shell writes it first, a clean one is evicted.
"""

from __future__ import annotations

import enum
import itertools
import operator
import re
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from servers.cache.errors import IllegalTransition, NoSuchDevice, NotPinHolder, UnknownPage
from servers.cache.geometry import PageGeometry

PAGE: Final = 4096


class State(enum.IntEnum):
    """A page's state: the two low bits of its frame's state byte."""

    ABSENT = 0
    READING = 1
    PRESENT = 2
    WRITING = 3


class Event(enum.Enum):
    LOAD = "load"
    ZERO_FILL = "zero_fill"
    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    WRITE = "write"
    WRITTEN = "written"
    WRITE_FAILED = "write_failed"
    EVICT = "evict"
    DISCARD = "discard"

    # Members are singletons compared by identity: identity hashing agrees with equality.
    __hash__ = object.__hash__


TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (State.ABSENT, Event.LOAD): State.READING,
    (State.ABSENT, Event.ZERO_FILL): State.PRESENT,
    (State.READING, Event.LOADED): State.PRESENT,
    (State.READING, Event.LOAD_FAILED): State.ABSENT,
    (State.PRESENT, Event.WRITE): State.WRITING,
    (State.WRITING, Event.WRITTEN): State.PRESENT,
    (State.WRITING, Event.WRITE_FAILED): State.PRESENT,
    (State.PRESENT, Event.EVICT): State.ABSENT,
    (State.PRESENT, Event.DISCARD): State.ABSENT,
}

# The frame's state byte: the state in bits 0-1, then flags.
STATE_MASK: Final = 0x03
DIRTY: Final = 0x04
REFERENCED: Final = 0x08
ZERO_ON_ARRIVAL: Final = 0x10  # a zero-fill request met the page while it was being read
ILLEGAL: Final = 0xFF  # what a translation yields for an event the state does not allow


def next_state(lba: int, state: State, event: Event) -> State:
    """The table's answer for ``event`` in ``state``; anything not in it is a typed error."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        raise IllegalTransition(f"page {lba}: {event.value} is not allowed in state {state.name}")
    return nxt


def _event_table(event: Event) -> bytes:
    out = bytearray(256)
    for byte in range(256):
        nxt = TRANSITIONS.get((State(byte & STATE_MASK), event))
        out[byte] = ILLEGAL if nxt is None or byte == ILLEGAL else (byte & ~STATE_MASK) | nxt
    return bytes(out)


def _map_table(fn: Callable[[int], int]) -> bytes:
    return bytes(fn(b) for b in range(256))


# One translation per event: the state machine as data, applied to a run at a time.
EVENT_TABLES: Final[dict[Event, bytes]] = {event: _event_table(event) for event in Event}
_SET_DIRTY_REF: Final = _map_table(lambda b: b | DIRTY | REFERENCED)
_SET_REF: Final = _map_table(lambda b: b | REFERENCED)
_CLEAN: Final = _map_table(lambda b: b & ~(DIRTY | ZERO_ON_ARRIVAL))
_CLEAR_DIRTY: Final = _map_table(lambda b: b & ~DIRTY)
_IS_READING: Final = _map_table(lambda b: int(b & STATE_MASK == State.READING))
_IS_WRITING: Final = _map_table(lambda b: int(b & STATE_MASK == State.WRITING))
_IS_RESIDENT: Final = _map_table(lambda b: int(b & STATE_MASK in (State.PRESENT, State.WRITING)))
_IS_DIRTY: Final = _map_table(lambda b: int(bool(b & DIRTY)))
_TO_WRITE: Final = _map_table(lambda b: int(b & (STATE_MASK | DIRTY) == State.PRESENT | DIRTY))
_IS_IDLE: Final = _map_table(lambda b: int(b & STATE_MASK == State.PRESENT))
_IS_ZERO: Final = _map_table(lambda b: int(b == 0))
_HAS_REF: Final = _map_table(lambda b: int(bool(b & REFERENCED)))
_HAS_ZOA: Final = _map_table(lambda b: int(bool(b & ZERO_ON_ARRIVAL)))
# Pin counts: one byte each; 255 means "see the spill dict" (exact counts beyond 254).
_SPILL: Final = 255
_INC: Final = _map_table(lambda b: min(b + 1, 255))
_DEC: Final = _map_table(lambda b: max(b - 1, 0))
_ONES: Final = re.compile(b"\x01+")


def _mask(column: bytes | bytearray, table: bytes) -> int:
    """One 0/1 byte per slot (``table`` says which bytes count), as one integer for ``&``."""
    return int.from_bytes(column.translate(table), "little")


def fire(states: bytearray, start: int, count: int, event: Event, first_lba: int) -> None:
    """Apply ``event`` to ``count`` frames' state bytes from ``start``, all or nothing."""
    new = states[start : start + count].translate(EVENT_TABLES[event])
    bad = new.find(ILLEGAL)
    if bad >= 0:
        state = State(states[start + bad] & STATE_MASK)
        raise IllegalTransition(
            f"page at {first_lba}+{bad}: {event.value} is not allowed in state {state.name}"
        )
    states[start : start + count] = new


def page_runs(pages: Iterable[int], spp: int) -> list[tuple[int, int]]:
    """Distinct page numbers as sorted runs ``(first page, count)`` of consecutive pages.

    The steps between neighbours are compared at C speed (``map``); Python only
    sees the breaks between runs, so a list naming a few long runs costs little.
    """
    ordered = list(pages)
    if not all(map(operator.lt, ordered, itertools.islice(ordered, 1, None))):
        ordered = sorted(set(ordered))
    if not ordered:
        return []
    steps = bytes(map(spp.__eq__, map(operator.sub, itertools.islice(ordered, 1, None), ordered)))
    out: list[tuple[int, int]] = []
    start = 0
    brk = steps.find(0)
    while brk >= 0:
        out.append((ordered[start], brk + 1 - start))
        start = brk + 1
        brk = steps.find(0, start)
    out.append((ordered[start], len(ordered) - start))
    return out


def merge_runs(runs: Iterable[tuple[int, int]], spp: int) -> list[tuple[int, int]]:
    """Page runs in any order, overlapping or not, as sorted disjoint maximal runs."""
    out: list[tuple[int, int]] = []
    for lba, n in sorted(runs):
        end = lba + n * spp
        if out and lba <= out[-1][0] + out[-1][1] * spp:
            first = out[-1][0]
            out[-1] = (first, (max(end, first + out[-1][1] * spp) - first) // spp)
        elif n > 0:
            out.append((lba, n))
    return out


class RunTable:
    """One device's resident pages: sorted runs (first page, count, first frame).

    Page ``k`` of a run is page ``first + k * spp`` in frame ``phys + k * 4096``.
    Runs never overlap; adding pages that continue a run on the disk and in
    memory extends it, removing pages from the middle splits it.
    """

    def __init__(self, spp: int) -> None:
        self.spp = spp
        self.first = array("q")
        self.count = array("q")
        self.phys = array("q")
        self.pages = 0

    def __len__(self) -> int:
        return self.pages

    def find(self, lba: int) -> int:
        """The frame holding page ``lba``, or -1."""
        j = bisect_right(self.first, lba) - 1
        if j >= 0:
            k = (lba - self.first[j]) // self.spp
            if k < self.count[j]:
                return self.phys[j] + k * PAGE
        return -1

    def pieces(self, lba: int, n: int) -> list[tuple[int, int, int]]:
        """Cover ``n`` pages from ``lba``: ``(first page, count, first frame)``, frame -1 for gaps."""
        spp, first, count, phys = self.spp, self.first, self.count, self.phys
        end = lba + n * spp
        out: list[tuple[int, int, int]] = []
        cur = lba
        j = bisect_right(first, cur) - 1
        if j < 0 or first[j] + count[j] * spp <= cur:
            j += 1
        runs = len(first)
        while cur < end:
            if j < runs and first[j] <= cur:
                k = (cur - first[j]) // spp
                m = min(count[j] - k, (end - cur) // spp)
                out.append((cur, m, phys[j] + k * PAGE))
                cur += m * spp
                j += 1
            else:
                stop = min(end, first[j]) if j < runs else end
                out.append((cur, (stop - cur) // spp, -1))
                cur = stop
        return out

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(list(zip(self.first, self.count, self.phys, strict=True)))

    def add(self, lba: int, n: int, phys: int) -> None:
        """Insert ``n`` absent pages from ``lba`` held by frames from ``phys``."""
        spp, first, count, frames = self.spp, self.first, self.count, self.phys
        self.pages += n
        i = bisect_right(first, lba)
        if i > 0 and first[i - 1] + count[i - 1] * spp == lba and (
            frames[i - 1] + count[i - 1] * PAGE == phys
        ):
            count[i - 1] += n
            if i < len(first) and first[i] == lba + n * spp and frames[i] == phys + n * PAGE:
                count[i - 1] += count[i]
                del first[i], count[i], frames[i]
            return
        if i < len(first) and first[i] == lba + n * spp and frames[i] == phys + n * PAGE:
            first[i], count[i], frames[i] = lba, count[i] + n, phys
            return
        first.insert(i, lba)
        count.insert(i, n)
        frames.insert(i, phys)

    def remove(self, lba: int, n: int) -> None:
        """Take ``n`` resident pages from ``lba`` out of the table (splitting runs as needed)."""
        spp, first, count, frames = self.spp, self.first, self.count, self.phys
        cur, left = lba, n
        while left > 0:
            j = bisect_right(first, cur) - 1
            k = (cur - first[j]) // spp if j >= 0 else -1
            if k < 0 or k >= count[j]:
                raise UnknownPage(f"page {cur} is not resident")
            c, p = count[j], frames[j]
            m = min(c - k, left)
            if k == 0 and m == c:
                del first[j], count[j], frames[j]
            elif k == 0:
                first[j], count[j], frames[j] = cur + m * spp, c - m, p + m * PAGE
            elif k + m == c:
                count[j] = k
            else:
                count[j] = k
                first.insert(j + 1, cur + m * spp)
                count.insert(j + 1, c - k - m)
                frames.insert(j + 1, p + (k + m) * PAGE)
            self.pages -= m
            cur += m * spp
            left -= m

    def heap_bytes(self) -> int:
        return sum(sys.getsizeof(a) for a in (self.first, self.count, self.phys))


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting for its pages: done when ``missing`` (load ids) is empty or it failed."""

    device: str
    runs: list[tuple[int, int]]  # the request's pages: (first page, count), sorted
    missing: set[int] = field(default_factory=set)
    error: tuple[int, str] | None = None
    holder: str = ""  # the port the pages (and their pins) are handed to

    @property
    def done(self) -> bool:
        return self.error is not None or not self.missing

    @property
    def page_count(self) -> int:
        return sum(n for _, n in self.runs)


class _Command:
    """Pages of one driver command: consecutive on the disk, ``parts`` are their frame runs
    ``(first page, count, first frame)`` (one scatter/gather segment each)."""

    __slots__ = ()
    parts: tuple[tuple[int, int, int], ...]

    @property
    def lba(self) -> int:
        return self.parts[0][0]

    @property
    def count(self) -> int:
        return sum(n for _, n, _ in self.parts)


@dataclass(eq=False, slots=True)
class Load(_Command):
    """Pages being read by one driver command, and who waits for them."""

    id: int
    device: str
    parts: tuple[tuple[int, int, int], ...]
    waiters: list[Waiter]


@dataclass(frozen=True, slots=True)
class Store(_Command):
    """Pages being written by one driver command."""

    device: str
    parts: tuple[tuple[int, int, int], ...]


@dataclass(slots=True)
class Admission:
    """What admitting a request means for the shell: frames to zero now, loads to start."""

    waiter: Waiter
    to_read: list[Load]
    zero: list[int]
    hits: int
    zero_dirty: bool = True  # zero-filled pages are dirty (else clean-but-zero: see admit_runs)


@dataclass(slots=True)
class Outcome:
    """Result of a completion: waiters that finished (or failed), frames to zero or to free."""

    finished: list[Waiter] = field(default_factory=list)
    zero: list[int] = field(default_factory=list)
    free: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Sweep:
    """Result of one clock sweep: frames evicted, and dirty pages to write before they can go."""

    evicted: list[int] = field(default_factory=list)
    dirty: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Census:
    present: int
    dirty: int
    pinned: int
    frames: int


def _frame_number(phys: int) -> int:
    return phys // PAGE


class PageCache:
    """Run tables of every device, per-frame state and pin bytes, loads, and one clock."""

    def __init__(self, frame_number: Callable[[int], int] = _frame_number) -> None:
        self.geometry: dict[str, PageGeometry] = {}
        self.runs: dict[str, RunTable] = {}
        self._devices: list[str] = []  # device byte of a frame: index + 1 (0: frame not held)
        self._number = frame_number  # dense frame numbers: consecutive frames, consecutive numbers
        self._base = -1  # frame number of slot 0 (the columns cover the frames seen so far)
        self._dev = bytearray()
        self._lba = array("q")
        self._state = bytearray()
        self._pins = bytearray()
        self._held: dict[str, bytearray] = {}  # holder port -> its pin count per slot
        self._spill: dict[tuple[str, int], int] = {}  # (holder or "", frame number) -> count > 254
        self._loads: dict[int, Load] = {}
        self._load_ids = itertools.count(1)
        self._hand = 0

    def add_device(self, name: str, geometry: PageGeometry) -> None:
        self.geometry[name] = geometry
        if name not in self.runs:
            self.runs[name] = RunTable(geometry.spp)
            self._devices.append(name)

    def table(self, device: str) -> RunTable:
        table = self.runs.get(device)
        if table is None:
            raise NoSuchDevice(f"the cache has no device {device!r}")
        return table

    # ----------------------------------------------------------------- columns
    def _slot(self, phys: int, n: int = 1) -> int:
        """The column index of frame ``phys`` (``n`` frames from it), growing the columns."""
        number = self._number(phys)
        if self._base < 0:
            self._base = number
        if number < self._base:
            self._grow_front(self._base - number)
        s = number - self._base
        short = s + n - len(self._state)
        if short > 0:
            self._grow_back(short)
        return s

    def _columns(self) -> list[bytearray]:
        return [self._dev, self._state, self._pins, *self._held.values()]

    def _grow_back(self, n: int) -> None:
        zeros = bytes(n)
        for column in self._columns():
            column.extend(zeros)
        self._lba.extend(array("q", [0]) * n)

    def _grow_front(self, n: int) -> None:
        zeros = bytes(n)
        for column in self._columns():
            column[0:0] = zeros
        self._lba[0:0] = array("q", [0]) * n
        self._base -= n
        self._hand += n

    def _holder(self, holder: str) -> bytearray:
        column = self._held.get(holder)
        if column is None:
            column = self._held[holder] = bytearray(len(self._state))
        return column

    def _count_of(self, column: bytearray, key: str, s: int) -> int:
        value = column[s]
        return self._spill[(key, s + self._base)] if value == _SPILL else value

    def _add(self, column: bytearray, key: str, s: int, n: int, delta: int) -> None:
        """Add ``delta`` (+1 or -1) to ``n`` counts from slot ``s`` (never below zero: checked
        by the caller); a run at once unless a count is at the spill edge."""
        segment = column[s : s + n]
        if delta > 0 and segment.find(b"\xfe") < 0 and segment.find(b"\xff") < 0:
            column[s : s + n] = segment.translate(_INC)
            return
        if delta < 0 and segment.find(b"\x00") < 0 and segment.find(b"\xff") < 0:
            column[s : s + n] = segment.translate(_DEC)
            return
        for i in range(s, s + n):
            value = self._count_of(column, key, i) + delta
            k = (key, i + self._base)
            if value >= _SPILL:
                self._spill[k] = value
                column[i] = _SPILL
            else:
                self._spill.pop(k, None)
                column[i] = value

    def _pin(self, holder: str, s: int, n: int, delta: int) -> None:
        self._add(self._pins, "", s, n, delta)
        self._add(self._holder(holder), holder, s, n, delta)

    def _clear(self, s: int, n: int) -> None:
        """Forget ``n`` frames' pages (they left the table)."""
        zeros = bytes(n)
        for column in self._columns():
            column[s : s + n] = zeros
        if self._spill:
            numbers = range(s + self._base, s + n + self._base)
            for key in [k for k in self._spill if k[1] in numbers]:
                del self._spill[key]

    def _drop(self, device: str, lba: int, n: int, phys: int) -> list[int]:
        """Take ``n`` pages out of the table; their frames."""
        self.runs[device].remove(lba, n)
        self._clear(self._slot(phys, n), n)
        return list(range(phys, phys + n * PAGE, PAGE))

    # ------------------------------------------------------------- admission
    def absent(self, device: str, pages: Iterable[int]) -> int:
        """How many of these pages need a new frame."""
        return self.absent_runs(device, page_runs(pages, self.table(device).spp))

    def absent_runs(self, device: str, runs: Iterable[tuple[int, int]]) -> int:
        table = self.table(device)
        return sum(m for lba, n in runs for _, m, phys in table.pieces(lba, n) if phys < 0)

    def absent_pieces(
        self, device: str, runs: Iterable[tuple[int, int]], limit: int
    ) -> list[tuple[int, int]]:
        """The pages of ``runs`` not in the table, as runs: at most ``limit`` pages, first first.

        What a read-ahead may admit: pages already present (or on their way)
        are left as they are, unpinned and unreferenced.
        """
        table = self.table(device)
        out: list[tuple[int, int]] = []
        for lba, n in runs:
            for plba, m, phys in table.pieces(lba, n):
                if phys >= 0:
                    continue
                take = min(m, limit)
                if take <= 0:
                    return out
                out.append((plba, take))
                limit -= take
        return out

    def admit(
        self,
        device: str,
        pages: Iterable[int],
        whole_zero: set[int],
        frames: list[int],
        holder: str = "",
        max_pages: int = 256,
    ) -> Admission:
        """:meth:`admit_runs` for a list of page numbers."""
        runs = page_runs(pages, self.table(device).spp)
        return self.admit_runs(device, runs, whole_zero, frames, holder, max_pages)

    def admit_runs(
        self,
        device: str,
        runs: list[tuple[int, int]],
        whole_zero: set[int],
        frames: list[int],
        holder: str = "",
        max_pages: int = 256,
        *,
        zero_dirty: bool = True,
    ) -> Admission:
        """Join a request to the cache: pin every page for ``holder``, start loads, zero-fill.

        ``frames`` must hold exactly one fresh frame per absent page
        (:meth:`absent_runs`), ideally in ascending runs: each run of absent
        pages on consecutive frames is read by one command of at most
        ``max_pages`` pages. ``zero_dirty=False``: pages zero-filled here
        (``whole_zero``) stay clean, so they are written only if their holder
        marks them dirty (a writer's reserved room, mapped but maybe never
        filled); dropped unwritten, the next zero-fill request zeroes them again.
        """
        table = self.table(device)
        if self.absent_runs(device, runs) != len(frames):
            raise ValueError("admit() needs exactly one fresh frame per absent page")
        waiter = Waiter(device, list(runs), holder=holder)
        result = Admission(waiter, [], [], 0, zero_dirty)
        used = 0
        for lba, n in runs:
            for plba, m, phys in table.pieces(lba, n):
                if phys < 0:
                    self._admit_new(device, plba, frames[used : used + m], whole_zero, result,
                                    max_pages)
                    used += m
                else:
                    self._admit_hit(device, plba, m, phys, whole_zero, result)
        return result

    def _admit_new(
        self,
        device: str,
        lba: int,
        frames: list[int],
        whole_zero: set[int],
        result: Admission,
        max_pages: int,
    ) -> None:
        """Absent pages from ``lba``: into the table on the given frames, then loaded or zeroed.

        Pages to read that follow each other on the disk make one load of at most
        ``max_pages`` pages, whatever frame runs they landed in.
        """
        spp = self.runs[device].spp
        reads: list[tuple[int, int, int]] = []
        i, n = 0, len(frames)
        while i < n:
            first = frames[i]
            j = n if frames[i:] == list(range(first, first + (n - i) * PAGE, PAGE)) else i + 1
            while j < n and frames[j] == frames[j - 1] + PAGE:
                j += 1
            reads += self._new_run(device, lba + i * spp, j - i, first, whole_zero, result)
            i = j
        parts: list[tuple[int, int, int]] = []
        size = 0
        for first, m, phys in reads:
            while m:
                if parts and (parts[-1][0] + parts[-1][1] * spp != first or size == max_pages):
                    self._new_load(device, parts, result)
                    parts, size = [], 0
                take = min(m, max_pages - size)
                parts.append((first, take, phys))
                size += take
                first, m, phys = first + take * spp, m - take, phys + take * PAGE
        if parts:
            self._new_load(device, parts, result)

    def _new_load(
        self, device: str, parts: list[tuple[int, int, int]], result: Admission
    ) -> None:
        load = Load(next(self._load_ids), device, tuple(parts), [result.waiter])
        self._loads[load.id] = load
        result.waiter.missing.add(load.id)
        result.to_read.append(load)

    def _new_run(
        self,
        device: str,
        lba: int,
        n: int,
        phys: int,
        whole_zero: set[int],
        result: Admission,
    ) -> list[tuple[int, int, int]]:
        """Pages on one frame run into the table; returns the pieces to read."""
        geometry = self.geometry[device]
        spp, total = geometry.spp, geometry.total_sectors
        self.runs[device].add(lba, n, phys)
        s = self._slot(phys, n)
        self._dev[s : s + n] = bytes([self._devices.index(device) + 1]) * n
        self._lba[s : s + n] = array("q", range(lba, lba + n * spp, spp))
        self._pin(result.waiter.holder, s, n, +1)
        zero = [whole_zero.__contains__(lba + k * spp) for k in range(n)] if whole_zero else []
        reading = EVENT_TABLES[Event.LOAD][REFERENCED]
        filled = EVENT_TABLES[Event.ZERO_FILL][REFERENCED] | (DIRTY if result.zero_dirty else 0)
        reads: list[tuple[int, int, int]] = []
        k = 0
        while k < n:  # runs of pages to read, and of pages to zero-fill
            z = bool(zero) and zero[k]
            if zero:
                e = k + 1
                while e < n and zero[e] == z:
                    e += 1
            else:  # nothing to zero-fill: one piece, no look at each page
                e = n
            first, count, frame = lba + k * spp, e - k, phys + k * PAGE
            self._state[s + k : s + e] = bytes([filled if z else reading]) * count
            if z:
                result.zero.extend(range(frame, frame + count * PAGE, PAGE))
            else:
                reads.append((first, count, frame))
                for edge in {first, first + (count - 1) * spp}:  # bytes past the disk's edges
                    if edge < 0 or edge + spp > total:
                        result.zero.append(frame + (edge - first) // spp * PAGE)
            k = e
        return reads

    def _admit_hit(
        self, device: str, lba: int, n: int, phys: int, whole_zero: set[int], result: Admission
    ) -> None:
        """Pages already in the table: pin, reference, join their loads, zero if asked."""
        s = self._slot(phys, n)
        result.hits += n
        waiter = result.waiter
        self._pin(waiter.holder, s, n, +1)
        states = self._state
        self._state[s : s + n] = states[s : s + n].translate(_SET_REF)
        if states[s : s + n].translate(_IS_READING).find(1) >= 0:
            end = lba + n * self.runs[device].spp
            for load in self._loads.values():
                if (
                    load.device == device
                    and load.id not in waiter.missing
                    and load.lba < end
                    and lba < load.lba + load.count * self.runs[device].spp
                ):
                    load.waiters.append(waiter)
                    waiter.missing.add(load.id)
        if whole_zero:
            spp = self.runs[device].spp
            for k in range(n):
                if lba + k * spp not in whole_zero:
                    continue
                byte = states[s + k]
                if byte & STATE_MASK in (State.PRESENT, State.WRITING):
                    states[s + k] = byte | DIRTY if result.zero_dirty else byte
                    result.zero.append(phys + k * PAGE)
                else:
                    states[s + k] = byte | ZERO_ON_ARRIVAL

    # ------------------------------------------------------------ read results
    def _fire_parts(self, parts: Iterable[tuple[int, int, int]], event: Event) -> None:
        """``fire`` on several frame runs, all or nothing."""
        parts = list(parts)
        table = EVENT_TABLES[event]
        for lba, n, phys in parts:
            s = self._slot(phys, n)
            if self._state[s : s + n].translate(table).find(ILLEGAL) >= 0:
                fire(self._state, s, n, event, lba)  # raises, naming the page
        for lba, n, phys in parts:
            fire(self._state, self._slot(phys, n), n, event, lba)

    def loaded(self, load: Load) -> Outcome:
        """The driver filled the load's frames: wake the waiters whose last load this was."""
        out = Outcome()
        self._fire_parts(load.parts, Event.LOADED)
        self._loads.pop(load.id, None)
        states = self._state
        for _, n, phys in load.parts:
            s = self._slot(phys, n)
            if states[s : s + n].translate(_HAS_ZOA).find(1) >= 0:
                for k in range(n):
                    if states[s + k] & ZERO_ON_ARRIVAL:
                        states[s + k] = (states[s + k] & ~ZERO_ON_ARRIVAL) | DIRTY
                        out.zero.append(phys + k * PAGE)
        for waiter in load.waiters:
            waiter.missing.discard(load.id)
            if not waiter.missing and waiter.error is None:  # done, and did not fail
                out.finished.append(waiter)
        load.waiters = []
        return out

    def load_failed(self, load: Load, err: int, message: str) -> Outcome:
        """The read failed: its pages become ABSENT again and every request waiting on them fails."""
        out = Outcome()
        self._fire_parts(load.parts, Event.LOAD_FAILED)
        self._loads.pop(load.id, None)
        for lba, n, phys in load.parts:
            out.free += self._drop(load.device, lba, n, phys)
        for waiter in load.waiters:
            if waiter.error is None:
                waiter.error = (err, message)
                out.finished.append(waiter)
        load.waiters = []
        for waiter in out.finished:
            self._abandon(waiter)
        return out

    def _abandon(self, waiter: Waiter) -> None:
        """Drop a failed request's pins and take it off the loads it still waits on."""
        for load_id in waiter.missing:
            load = self._loads.get(load_id)
            if load is not None and waiter in load.waiters:
                load.waiters.remove(waiter)
        table = self.runs[waiter.device]
        for lba, n in waiter.runs:
            for _, m, phys in table.pieces(lba, n):
                if phys >= 0:  # the failed load's pages are gone already
                    self._pin(waiter.holder, self._slot(phys, m), m, -1)

    def refs(self, waiter: Waiter) -> list[tuple[int, int, int]]:
        """``(first page, count, first frame)`` runs of a finished request, in page order."""
        table = self.runs[waiter.device]
        spp = table.spp
        out: list[tuple[int, int, int]] = []
        for lba, n in waiter.runs:
            for plba, m, phys in table.pieces(lba, n):
                if out and out[-1][0] + out[-1][1] * spp == plba and (
                    out[-1][2] + out[-1][1] * PAGE == phys
                ):
                    out[-1] = (out[-1][0], out[-1][1] + m, out[-1][2])
                else:
                    out.append((plba, m, phys))
        return out

    # ------------------------------------------------------ pins and dirtiness
    def release(self, device: str, lbas: Iterable[int], holder: str = "") -> int:
        """:meth:`release_runs` for page numbers (each named once per pin it drops)."""
        lbas = list(lbas)
        if len(set(lbas)) == len(lbas):
            return self.release_runs(device, page_runs(lbas, self.table(device).spp), holder)
        released, refused, first_error = 0, 0, None
        for lba in lbas:
            try:
                released += self.release_runs(device, [(lba, 1)], holder)
            except (NotPinHolder, UnknownPage) as exc:
                refused += exc.refused
                first_error = first_error or exc
        if first_error is not None:
            raise type(first_error)(str(first_error), released=released, refused=refused)
        return released

    def release_runs(self, device: str, runs: Iterable[tuple[int, int]], holder: str = "") -> int:
        """Drop one of ``holder``'s pins per page; return how many were dropped.

        Pages ``holder`` holds no pin on are left alone and reported after the
        rest are done: ``NotPinHolder`` when others pin them (the refusal the
        shell counts), ``UnknownPage`` when nobody does.
        """
        table = self.table(device)
        unknown: list[int] = []
        not_held: list[int] = []
        released = 0
        held = self._holder(holder)
        for lba, n in runs:
            for plba, m, phys in table.pieces(lba, n):
                if phys < 0:
                    unknown.extend(range(plba, plba + min(m, 8) * table.spp, table.spp))
                    unknown.extend([plba] * max(0, m - 8))
                    continue
                s = self._slot(phys, m)
                mine = held[s : s + m]
                if mine.find(b"\x00") < 0:
                    self._pin(holder, s, m, -1)
                    released += m
                    continue
                for k in range(m):
                    if self._count_of(held, holder, s + k):
                        self._pin(holder, s + k, 1, -1)
                        released += 1
                    elif self._pins[s + k]:
                        not_held.append(plba + k * table.spp)
                    else:
                        unknown.append(plba + k * table.spp)
        if not_held:
            raise NotPinHolder(
                f"{holder or 'the sender'} holds no pin on {len(not_held)} page(s) of {device} "
                f"it released (e.g. {not_held[:8]}); refused",
                released=released, refused=len(not_held) + len(unknown),
            )
        if unknown:
            raise UnknownPage(
                f"release of pages not pinned on {device}: {unknown[:8]}",
                released=released, refused=len(unknown),
            )
        return released

    def mark_dirty(self, device: str, lbas: Iterable[int]) -> None:
        self.mark_dirty_runs(device, page_runs(lbas, self.table(device).spp))

    def mark_dirty_runs(self, device: str, runs: Iterable[tuple[int, int]]) -> None:
        """Record that a holder changed resident pages in place."""
        table = self.table(device)
        bad: list[int] = []
        states = self._state
        for lba, n in runs:
            for plba, m, phys in table.pieces(lba, n):
                if phys < 0:
                    bad.append(plba)
                    continue
                s = self._slot(phys, m)
                if states[s : s + m].translate(_IS_RESIDENT).find(0) < 0:
                    states[s : s + m] = states[s : s + m].translate(_SET_DIRTY_REF)
                    continue
                for k in range(s, s + m):
                    if states[k] & STATE_MASK in (State.PRESENT, State.WRITING):
                        states[k] |= DIRTY | REFERENCED
                    else:
                        bad.append(plba + (k - s) * table.spp)
        if bad:
            raise UnknownPage(
                f"cannot mark pages dirty that are not resident on {device}: {bad[:8]}"
            )

    def invalidate(self, device: str, lbas: Iterable[int]) -> list[int]:
        return self.invalidate_runs(device, page_runs(lbas, self.table(device).spp))

    def invalidate_runs(self, device: str, runs: Iterable[tuple[int, int]]) -> list[int]:
        """Forget freed space: discard dirty bytes; unpinned present pages lose their frame.

        Pinned pages stay (their holder still maps them) but are clean, so the
        stale bytes are never written; a page being read just finishes.
        """
        table = self.table(device)
        freed: list[int] = []
        for lba, n in runs:
            for plba, m, phys in table.pieces(lba, n):
                if phys < 0:
                    continue
                s = self._slot(phys, m)
                self._state[s : s + m] = self._state[s : s + m].translate(_CLEAN)
                present = self._state[s : s + m].translate(_IS_IDLE)
                unpinned = self._pins[s : s + m].translate(_IS_ZERO)
                idle = (  # both masks at once, as one big integer each
                    int.from_bytes(present, "little") & int.from_bytes(unpinned, "little")
                ).to_bytes(m, "little")
                for hit in _ONES.finditer(idle):
                    a, b = hit.span()
                    fire(self._state, s + a, b - a, Event.DISCARD, plba + a * table.spp)
                    freed += self._drop(device, plba + a * table.spp, b - a, phys + a * PAGE)
        return freed

    # ------------------------------------------------------------------ writes
    def _chosen(
        self, device: str, runs: Iterable[tuple[int, int]] | None
    ) -> list[tuple[int, int, int]]:
        table = self.table(device)
        if runs is None:
            return list(table)
        return [p for lba, n in runs for p in table.pieces(lba, n) if p[2] >= 0]

    def start_write(
        self, device: str, runs: Iterable[tuple[int, int]] | None = None, max_pages: int = 256
    ) -> list[Store]:
        """Take the dirty ``PRESENT`` pages among ``runs`` (all when None) into ``WRITING``.

        One :class:`Store` per driver command: consecutive on the disk, at most
        ``max_pages`` pages, one segment per run of consecutive frames.
        """
        spp = self.table(device).spp
        pieces: list[tuple[int, int, int]] = []
        states = self._state
        for lba, m, phys in self._chosen(device, runs):
            s = self._slot(phys, m)
            for hit in _ONES.finditer(states[s : s + m].translate(_TO_WRITE)):
                a, b = hit.span()
                fire(states, s + a, b - a, Event.WRITE, lba + a * spp)
                states[s + a : s + b] = states[s + a : s + b].translate(_CLEAR_DIRTY)
                pieces.append((lba + a * spp, b - a, phys + a * PAGE))
        pieces.sort()
        out: list[Store] = []
        parts: list[tuple[int, int, int]] = []
        size = 0
        for lba, m, phys in pieces:
            while m:
                if parts and (parts[-1][0] + parts[-1][1] * spp != lba or size == max_pages):
                    out.append(Store(device, tuple(parts)))
                    parts, size = [], 0
                take = min(m, max_pages - size)
                parts.append((lba, take, phys))
                size += take
                lba, m, phys = lba + take * spp, m - take, phys + take * PAGE
        if parts:
            out.append(Store(device, tuple(parts)))
        return out

    def in_flight_writes(self, device: str, runs: Iterable[tuple[int, int]] | None = None) -> int:
        """How many of these pages (all when None) are being written right now."""
        states = self._state
        total = 0
        for _, m, phys in self._chosen(device, runs):
            s = self._slot(phys, m)
            total += states[s : s + m].translate(_IS_WRITING).count(1)
        return total

    def has_dirty(self, device: str, runs: Iterable[tuple[int, int]] | None = None) -> bool:
        states = self._state
        for _, m, phys in self._chosen(device, runs):
            s = self._slot(phys, m)
            if states[s : s + m].translate(_IS_DIRTY).find(1) >= 0:
                return True
        return False

    def written(self, store: Store) -> None:
        self._fire_parts(store.parts, Event.WRITTEN)

    def write_failed(self, store: Store) -> None:
        """The bytes did not reach the disk: the pages stay resident and dirty."""
        self._fire_parts(store.parts, Event.WRITE_FAILED)
        for _, n, phys in store.parts:
            s = self._slot(phys, n)
            self._state[s : s + n] = self._state[s : s + n].translate(_SET_DIRTY_REF)

    def dirty_pages(self, device: str) -> list[int]:
        spp = self.table(device).spp
        out: list[int] = []
        for lba, m, phys in self.table(device):
            s = self._slot(phys, m)
            for hit in _ONES.finditer(self._state[s : s + m].translate(_IS_DIRTY)):
                out.extend(range(lba + hit.start() * spp, lba + hit.end() * spp, spp))
        return out

    # ------------------------------------------------------------- replacement
    def sweep(self, want: int) -> Sweep:
        """Second chance: evict up to ``want`` unpinned clean pages, at most two turns of the clock.

        The hand passes the frames in order; a stretch of frames is judged at
        once with byte masks (unpinned ``PRESENT`` pages: referenced ones lose
        their bit, dirty ones are reported, clean ones go), exactly as a hand
        moving one frame at a time would, stopping right after the ``want``-th
        eviction.
        """
        out = Sweep()
        seen_dirty: set[int] = set()
        size = len(self._state)
        budget = 2 * size
        while budget > 0 and len(out.evicted) < want:
            start = self._hand
            n = min(size - start, budget)
            used = self._sweep_stretch(start, n, want - len(out.evicted), out, seen_dirty)
            budget -= used
            self._hand = (start + used) % size
        return out

    def _sweep_stretch(
        self, h: int, n: int, need: int, out: Sweep, seen_dirty: set[int]
    ) -> int:
        """One pass of the hand over slots ``h .. h+n``; returns how many slots it passed."""
        states = self._state
        segment = states[h : h + n]
        idle = _mask(segment, _IS_IDLE) & _mask(self._pins[h : h + n], _IS_ZERO)
        referenced = _mask(segment, _HAS_REF) & idle
        dirty = _mask(segment, _IS_DIRTY) & idle & ~referenced
        evict = idle & ~referenced & ~dirty
        used = n
        if evict:
            evicting = evict.to_bytes(n, "little")
            if evicting.count(1) >= need:  # the hand stops right after the need-th eviction
                for hit in _ONES.finditer(evicting):
                    if hit.end() - hit.start() >= need:
                        used = hit.start() + need
                        break
                    need -= hit.end() - hit.start()
                keep = (1 << (8 * used)) - 1
                referenced, dirty, evict = referenced & keep, dirty & keep, evict & keep
        if referenced:  # each such byte has the bit: subtracting clears exactly it
            cleared = int.from_bytes(segment, "little") - referenced * REFERENCED
            states[h : h + n] = cleared.to_bytes(n, "little")
        if dirty:
            for hit in _ONES.finditer(dirty.to_bytes(n, "little")):
                for s in range(h + hit.start(), h + hit.end()):
                    if s not in seen_dirty:
                        seen_dirty.add(s)
                        device = self._devices[self._dev[s] - 1]
                        out.dirty.setdefault(device, []).append(self._lba[s])
        if evict:
            for hit in _ONES.finditer(evict.to_bytes(n, "little")):
                self._evict_slots(h + hit.start(), h + hit.end(), out)
        return used

    def _evict_slots(self, a: int, b: int, out: Sweep) -> None:
        """Evict the pages of slots ``a .. b`` (all unpinned, clean, ``PRESENT``), a run at a time."""
        lbas, devs = self._lba, self._dev
        k = a
        while k < b:
            dev, first = devs[k], lbas[k]
            device = self._devices[dev - 1]
            spp = self.runs[device].spp
            e = k + 1
            while e < b and devs[e] == dev and lbas[e] == lbas[e - 1] + spp:
                e += 1
            for lba, m, phys in self.runs[device].pieces(first, e - k):
                fire(self._state, self._slot(phys, m), m, Event.EVICT, lba)
                out.evicted += self._drop(device, lba, m, phys)
            k = e

    # ---------------------------------------------------------------- recovery
    def abort_io(self, err: int, message: str) -> Outcome:
        """After a crash: loads in flight fail (frames freed), writes in flight count as failed."""
        out = Outcome()
        for load in list(self._loads.values()):
            failed = self.load_failed(load, err, message)
            out.finished.extend(failed.finished)
            out.free.extend(failed.free)
        for device, table in self.runs.items():
            for lba, m, phys in list(table):
                s = self._slot(phys, m)
                for hit in _ONES.finditer(self._state[s : s + m].translate(_IS_WRITING)):
                    a, b = hit.span()
                    self.write_failed(Store(device, ((lba + a * table.spp, b - a, phys + a * PAGE),)))
        return out

    def census(self) -> Census:
        states, size = self._state, len(self._state)
        held = size - self._dev.count(0)
        return Census(
            present=states.translate(_IS_RESIDENT).count(1),
            dirty=states.translate(_IS_DIRTY).count(1),
            pinned=size - self._pins.count(0),
            frames=held,
        )

    def heap_bytes(self) -> int:
        """Python heap the cache's table takes (columns, run tables, spill), for the bench."""
        columns = [self._lba, *self._columns()]
        return (
            sum(sys.getsizeof(c) for c in columns)
            + sum(t.heap_bytes() for t in self.runs.values())
            + sys.getsizeof(self._spill)
        )

    # --------------------------------------------------------------- inspection
    def page(self, device: str, lba: int) -> PageView | None:
        """A live view of one page (tests, audits); None when it is not in the table."""
        phys = self.table(device).find(lba)
        return None if phys < 0 else PageView(self, device, lba, phys)

    @property
    def tables(self) -> dict[str, TableView]:
        """Per device, a read-only mapping page number -> :class:`PageView` (audits)."""
        return {name: TableView(self, name) for name in self.runs}

    def loads_of(self, device: str, lba: int) -> list[Load]:
        spp = self.table(device).spp
        return [
            load for load in self._loads.values()
            if load.device == device and load.lba <= lba < load.lba + load.count * spp
        ]


class PageView:
    """One page of the table, read through the columns (and ``referenced`` settable)."""

    __slots__ = ("_core", "device", "lba", "phys")

    def __init__(self, core: PageCache, device: str, lba: int, phys: int) -> None:
        self._core, self.device, self.lba, self.phys = core, device, lba, phys

    @property
    def _s(self) -> int:
        return self._core._slot(self.phys)

    @property
    def state(self) -> State:
        return State(self._core._state[self._s] & STATE_MASK)

    @property
    def dirty(self) -> bool:
        return bool(self._core._state[self._s] & DIRTY)

    @property
    def referenced(self) -> bool:
        return bool(self._core._state[self._s] & REFERENCED)

    @referenced.setter
    def referenced(self, value: bool) -> None:
        s = self._s
        byte = self._core._state[s]
        self._core._state[s] = byte | REFERENCED if value else byte & ~REFERENCED

    @property
    def pins(self) -> int:
        return self._core._count_of(self._core._pins, "", self._s)

    @property
    def holders(self) -> dict[str, int]:
        core, s = self._core, self._s
        counts = {h: core._count_of(col, h, s) for h, col in core._held.items()}
        return {h: n for h, n in counts.items() if n}

    @property
    def waiters(self) -> list[Waiter]:
        return [w for load in self._core.loads_of(self.device, self.lba) for w in load.waiters]


class TableView(Mapping[int, PageView]):
    """A device's pages as a mapping, for audits; built from the run table on every use."""

    def __init__(self, core: PageCache, device: str) -> None:
        self._core, self._device = core, device

    def __getitem__(self, lba: int) -> PageView:
        page = self._core.page(self._device, lba)
        if page is None:
            raise KeyError(lba)
        return page

    def __iter__(self) -> Iterator[int]:
        table = self._core.runs[self._device]
        for lba, n, _ in table:
            yield from range(lba, lba + n * table.spp, table.spp)

    def __len__(self) -> int:
        return len(self._core.runs[self._device])

