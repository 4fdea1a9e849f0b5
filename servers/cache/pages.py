"""The pure core of the disc cache: page states, wait lists, pins and the clock.

No awaits and no I/O (h11 style): the server shell asks this core what to do,
performs the driver commands and memory operations, and reports the outcome
back. That keeps every rule below testable without a router.

A page of a device is in one of four states; ``ABSENT`` pages have no record::

    ABSENT --LOAD--> READING --LOADED--> PRESENT --WRITE--> WRITING --WRITTEN--> PRESENT
       |               `--LOAD_FAILED--> ABSENT              `--WRITE_FAILED--> PRESENT (dirty)
       `--ZERO_FILL--> PRESENT --EVICT / DISCARD--> ABSENT

``dirty`` is a flag beside the state: ``WRITE`` clears it, so a page changed
while its write is in flight (``MarkDirty`` during ``WRITING``) stays dirty
after ``WRITTEN`` and is written again: nothing written after a writeback
started can be lost by it.

Pins: every page handed to a receiver (``SectorsReady``/``Pages``) carries one
pin for it. The pin is taken when the request is *admitted*, so a page that is
already present cannot be evicted while the request waits for its other
pages; a failed request drops the pins it took. Each pin is recorded with its
*holder* (the port the pages are handed to), and only that holder may release
it: a ``Release`` naming pins the sender does not hold is refused for those
pins (``NotPinHolder``), so a file system cannot drop the VFS's pins, nor the
VFS a file system's.

Replacement is second chance (the clock) over unpinned ``PRESENT`` pages:
a referenced page loses its bit and survives one more round, a dirty page is
reported so the shell writes it first, a clean one is evicted.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from servers.cache.errors import IllegalTransition, NoSuchDevice, NotPinHolder, UnknownPage
from servers.cache.geometry import PageGeometry


class State(enum.Enum):
    ABSENT = "absent"
    READING = "reading"
    PRESENT = "present"
    WRITING = "writing"

    # Members are singletons compared by identity, so identity hashing agrees with
    # equality; it keeps the per-page table lookups out of Enum's Python-level __hash__.
    __hash__ = object.__hash__


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

    __hash__ = object.__hash__  # see State


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

# States whose frame holds the page's current bytes.
RESIDENT: Final = frozenset({State.PRESENT, State.WRITING})


def next_state(lba: int, state: State, event: Event) -> State:
    """The table's answer for ``event`` in ``state``; anything not in it is a typed error."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        raise IllegalTransition(f"page {lba}: {event.value} is not allowed in state {state.value}")
    return nxt


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting for its pages: done when ``missing`` is empty, failed when ``error`` is set."""

    device: str
    pages: list[int]
    missing: set[int] = field(default_factory=set)
    error: tuple[int, str] | None = None
    holder: str = ""  # the port the pages (and their pins) are handed to

    @property
    def done(self) -> bool:
        return self.error is not None or not self.missing


class Page(msgspec.Struct, gc=False, eq=False):
    """The cache's record of one page of one device.

    A ``gc=False`` struct: there is one per cached page (tens of thousands), none
    is part of a reference cycle, and untracked records keep the garbage
    collector's full passes short while a large read creates thousands of them.
    """

    lba: int
    phys: int
    state: State = State.ABSENT
    pins: int = 0
    dirty: bool = False
    referenced: bool = True
    zero_on_arrival: bool = False
    waiters: list[Waiter] = msgspec.field(default_factory=list)
    holders: dict[str, int] = msgspec.field(default_factory=dict)  # port -> its pins (sum: pins)

    def pin(self, holder: str) -> None:
        self.pins += 1
        self.holders[holder] = self.holders.get(holder, 0) + 1

    def unpin(self, holder: str) -> bool:
        """Drop one of ``holder``'s pins; False (and nothing changes) when it holds none."""
        held = self.holders.get(holder, 0)
        if held <= 0:
            return False
        if held == 1:
            del self.holders[holder]
        else:
            self.holders[holder] = held - 1
        self.pins -= 1
        return True

    def fire(self, event: Event) -> None:
        """Apply ``event`` through the transition table; anything not in it is a typed error."""
        self.state = next_state(self.lba, self.state, event)


def fire_all(pages: Iterable[Page], event: Event) -> None:
    """``page.fire(event)`` for each page in turn, asking the table once per run of equal states."""
    state: State | None = None
    nxt = State.ABSENT
    for page in pages:
        if page.state is not state:
            state = page.state
            nxt = next_state(page.lba, state, event)
        page.state = nxt


@dataclass(slots=True)
class Admission:
    """What admitting a request means for the shell: frames to zero now, pages to read."""

    waiter: Waiter
    to_read: list[Page]
    zero: list[int]
    hits: int


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


class PageCache:
    """Page tables of every device, their wait lists and one clock over all of them."""

    def __init__(self) -> None:
        self.geometry: dict[str, PageGeometry] = {}
        self.tables: dict[str, dict[int, Page]] = {}
        self._clock: OrderedDict[tuple[str, int], None] = OrderedDict()

    def add_device(self, name: str, geometry: PageGeometry) -> None:
        self.geometry[name] = geometry
        self.tables.setdefault(name, {})

    def table(self, device: str) -> dict[int, Page]:
        table = self.tables.get(device)
        if table is None:
            raise NoSuchDevice(f"the cache has no device {device!r}")
        return table

    def page(self, device: str, lba: int) -> Page | None:
        return self.table(device).get(lba)

    # ------------------------------------------------------------- admission
    def absent(self, device: str, pages: Iterable[int]) -> int:
        """How many of these pages need a new frame."""
        table = self.table(device)
        return len(list(itertools.filterfalse(table.__contains__, pages)))

    def admit(
        self,
        device: str,
        pages: list[int],
        whole_zero: set[int],
        frames: list[int],
        holder: str = "",
    ) -> Admission:
        """Join a request to the cache: pin every page for ``holder``, start loads, zero-fill.

        ``frames`` must hold exactly one fresh frame per absent page
        (:meth:`absent`); the caller allocated them without awaiting since.
        """
        table = self.table(device)
        geometry = self.geometry[device]
        waiter = Waiter(device, list(pages), holder=holder)
        result = Admission(waiter, [], [], 0)
        # A new page starts ABSENT; the table says where LOAD and ZERO_FILL take it.
        loading = next_state(0, State.ABSENT, Event.LOAD)
        filled = next_state(0, State.ABSENT, Event.ZERO_FILL)
        reading = State.READING
        if (
            pages
            and not whole_zero
            and len(frames) == len(pages)
            and table.keys().isdisjoint(pages)
            and len(set(pages)) == len(pages)
        ):
            self._admit_cold(device, result, frames, loading)
            return result
        spare = iter(frames)
        missing, to_read, zero_frames = waiter.missing, result.to_read, result.zero
        clock = self._clock
        spp, total = geometry.spp, geometry.total_sectors
        hits = 0
        for lba in pages:
            page = table.get(lba)
            zero = lba in whole_zero
            if page is None:
                phys = next(spare)
                if zero:
                    page = Page(lba, phys, filled, dirty=True)
                    zero_frames.append(phys)
                else:
                    page = Page(lba, phys, loading)
                    to_read.append(page)
                    if lba < 0 or lba + spp > total:  # geometry.is_partial(lba)
                        zero_frames.append(phys)  # the bytes past the disk's edge read as zero
                table[lba] = page
                clock[(device, lba)] = None
            else:
                hits += 1
                if zero and page.state in RESIDENT:
                    page.dirty = True
                    zero_frames.append(page.phys)
                elif zero:
                    page.zero_on_arrival = True
            if page.state is reading:
                missing.add(lba)
                page.waiters.append(waiter)
            page.pin(holder)
            page.referenced = True
        result.hits = hits
        if next(spare, None) is not None:
            raise ValueError("admit() was given more frames than absent pages")
        return result

    def _admit_cold(
        self, device: str, result: Admission, frames: list[int], loading: State
    ) -> None:
        """``admit`` when every page is new and none is zero-filled: the same records, in bulk."""
        waiter = result.waiter
        pages = waiter.pages
        geometry = self.geometry[device]
        spp, total = geometry.spp, geometry.total_sectors
        join = loading is State.READING  # the request waits for the pages being read
        holder = waiter.holder
        created = [
            Page(lba, phys, loading, 1, False, True, False, [waiter] if join else [], {holder: 1})
            for lba, phys in zip(pages, frames, strict=True)
        ]
        if join:
            waiter.missing.update(pages)
        self.tables[device].update(zip(pages, created, strict=True))
        clock = self._clock
        for key in zip(itertools.repeat(device), pages):  # (OrderedDict.update is slower)
            clock[key] = None
        result.to_read.extend(created)
        if min(pages) < 0 or max(pages) + spp > total:  # the disk's edge pages read zeros past it
            result.zero.extend(
                phys
                for lba, phys in zip(pages, frames, strict=True)
                if lba < 0 or lba + spp > total
            )

    def _drop(self, device: str, page: Page) -> None:
        del self.tables[device][page.lba]
        self._clock.pop((device, page.lba), None)

    # ------------------------------------------------------------ read results
    def loaded(self, device: str, lbas: Iterable[int]) -> Outcome:
        """The driver filled these frames: wake the waiters whose last page this was."""
        table = self.table(device)
        out = Outcome()
        state: State | None = None
        nxt = State.ABSENT
        for lba in lbas:
            page = table[lba]
            if page.state is not state:  # as page.fire(Event.LOADED), one lookup per state
                state = page.state
                nxt = next_state(lba, state, Event.LOADED)
            page.state = nxt
            if page.zero_on_arrival:
                page.zero_on_arrival = False
                page.dirty = True
                out.zero.append(page.phys)
            waiters = page.waiters
            if not waiters:
                continue
            for waiter in waiters:
                missing = waiter.missing
                missing.discard(lba)
                if not missing and waiter.error is None:  # it is done, and did not fail
                    out.finished.append(waiter)
            waiters.clear()
        return out

    def load_failed(self, device: str, lbas: Iterable[int], err: int, message: str) -> Outcome:
        """The read failed: its pages become ABSENT again and every request waiting on them fails."""
        table = self.table(device)
        out = Outcome()
        for lba in lbas:
            page = table[lba]
            page.fire(Event.LOAD_FAILED)
            self._drop(device, page)
            out.free.append(page.phys)
            for waiter in page.waiters:
                if waiter.error is None:
                    waiter.error = (err, message)
                    out.finished.append(waiter)
        for waiter in out.finished:
            self._abandon(waiter)
        return out

    def _abandon(self, waiter: Waiter) -> None:
        """Drop a failed request's pins and take it off the wait lists of pages still loading."""
        table = self.tables[waiter.device]
        for lba in waiter.pages:
            page = table.get(lba)
            if page is None:
                continue  # one of the pages that failed: its record is gone
            page.unpin(waiter.holder)
            if waiter in page.waiters:
                page.waiters.remove(waiter)

    def refs(self, waiter: Waiter) -> list[tuple[int, int]]:
        """``(page_lba, phys)`` of a finished request, in page order."""
        table = self.tables[waiter.device]
        return [(lba, table[lba].phys) for lba in waiter.pages]

    # ------------------------------------------------------ pins and dirtiness
    def release(self, device: str, lbas: Iterable[int], holder: str = "") -> int:
        """Drop one of ``holder``'s pins per page; return how many were dropped.

        Pages ``holder`` holds no pin on are left alone and reported after the
        rest are done: ``NotPinHolder`` when others pin them (the refusal the
        shell counts), ``UnknownPage`` when nobody does.
        """
        table = self.table(device)
        unknown: list[int] = []
        not_held: list[int] = []
        released = 0
        for lba in lbas:
            page = table.get(lba)
            if page is None or page.pins <= 0:
                unknown.append(lba)
            elif page.unpin(holder):
                released += 1
            else:
                not_held.append(lba)
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
        """Record that a holder changed resident pages in place."""
        table = self.table(device)
        bad: list[int] = []
        for lba in lbas:
            page = table.get(lba)
            if page is None or page.state not in RESIDENT:
                bad.append(lba)
            else:
                page.dirty = True
                page.referenced = True
        if bad:
            raise UnknownPage(
                f"cannot mark pages dirty that are not resident on {device}: {bad[:8]}"
            )

    def invalidate(self, device: str, lbas: Iterable[int]) -> list[int]:
        """Forget freed space: discard dirty bytes; unpinned resident pages lose their frame.

        Pinned pages stay (their holder still maps them) but are clean, so the
        stale bytes are never written; a page being read just finishes.
        """
        table = self.table(device)
        freed: list[int] = []
        for lba in lbas:
            page = table.get(lba)
            if page is None:
                continue
            page.dirty = False
            page.zero_on_arrival = False
            if page.state is State.PRESENT and page.pins == 0:
                page.fire(Event.DISCARD)
                self._drop(device, page)
                freed.append(page.phys)
        return freed

    # ------------------------------------------------------------------ writes
    def start_write(self, device: str, lbas: Iterable[int] | None = None) -> list[Page]:
        """Take the dirty ``PRESENT`` pages among ``lbas`` (all when None) into ``WRITING``."""
        table = self.table(device)
        chosen = table.values() if lbas is None else (table.get(lba) for lba in lbas)
        out: list[Page] = []
        for page in chosen:
            if page is not None and page.state is State.PRESENT and page.dirty:
                page.fire(Event.WRITE)
                page.dirty = False
                out.append(page)
        out.sort(key=lambda p: p.lba)
        return out

    def in_flight_writes(self, device: str, lbas: Iterable[int] | None = None) -> int:
        """How many of these pages (all when None) are being written right now."""
        table = self.table(device)
        chosen = table.values() if lbas is None else (table.get(lba) for lba in lbas)
        return sum(1 for p in chosen if p is not None and p.state is State.WRITING)

    def written(self, device: str, lbas: Iterable[int]) -> None:
        table = self.table(device)
        fire_all((table[lba] for lba in lbas), Event.WRITTEN)

    def write_failed(self, device: str, lbas: Iterable[int]) -> None:
        """The bytes did not reach the disk: the pages stay resident and dirty."""
        table = self.table(device)
        for lba in lbas:
            page = table[lba]
            page.fire(Event.WRITE_FAILED)
            page.dirty = True

    def dirty_pages(self, device: str) -> list[int]:
        return sorted(p.lba for p in self.table(device).values() if p.dirty)

    # ------------------------------------------------------------- replacement
    def sweep(self, want: int) -> Sweep:
        """Second chance: evict up to ``want`` unpinned clean pages, at most two turns of the clock."""
        out = Sweep()
        seen_dirty: set[tuple[str, int]] = set()
        for _ in range(2 * len(self._clock)):
            if len(out.evicted) >= want or not self._clock:
                break
            key = next(iter(self._clock))
            self._clock.move_to_end(key)
            page = self.tables[key[0]][key[1]]
            if page.state is not State.PRESENT or page.pins:
                continue
            if page.referenced:
                page.referenced = False
            elif page.dirty:
                if key not in seen_dirty:
                    seen_dirty.add(key)
                    out.dirty.setdefault(key[0], []).append(key[1])
            else:
                page.fire(Event.EVICT)
                self._drop(key[0], page)
                out.evicted.append(page.phys)
        return out

    # ---------------------------------------------------------------- recovery
    def abort_io(self, err: int, message: str) -> Outcome:
        """After a crash: loads in flight fail (frames freed), writes in flight count as failed."""
        out = Outcome()
        for device, table in self.tables.items():
            reading = [p.lba for p in table.values() if p.state is State.READING]
            writing = [p.lba for p in table.values() if p.state is State.WRITING]
            failed = self.load_failed(device, reading, err, message)
            out.finished.extend(failed.finished)
            out.free.extend(failed.free)
            self.write_failed(device, writing)
        return out

    def census(self) -> Census:
        pages = [p for t in self.tables.values() for p in t.values()]
        return Census(
            present=sum(1 for p in pages if p.state in RESIDENT),
            dirty=sum(1 for p in pages if p.dirty),
            pinned=sum(1 for p in pages if p.pins),
            frames=len(pages),
        )
