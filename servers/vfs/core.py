"""The pure core of the kernel file driver: central files, windows, parts, dirty pages.

No awaits and no I/O (h11 style, like ``servers/cache/pages.py``): the server
shell receives messages, asks this core what to do, performs the mappings and
the messages to the cache and the file system, and reports back. Every rule
below is tested without a router or an event loop (``tests/vfs/test_core.py``).

A window (one open handle) goes through explicit states::

    OPENING --opened--> OPEN --close--> CLOSING --idle--> CLOSED

Operations (``CachePart``, ``Read``, ``Write``, ...) are admitted only while
the window is ``OPEN`` and are counted while in flight; ``CLOSING`` refuses new
ones, nothing is mapped into a window that is not ``OPEN``, and the window's
frames are released only once the count is back to zero (``CLOSED``).

A central file is found by (file system, file id) and holds the file's pages
as runs (:class:`FilePages`: first file page, count, first frame, first cache
page, flags), not one object per page. Dirt is tracked per 4 KiB page: the
library sets a byte in the window's dirty map (``abi.py``) for each page it
stores into; the driver takes those bytes into the pages' ``DIRTY`` flag
(splitting runs where pages differ) and hands exactly those pages to the cache.
"""

from __future__ import annotations

import enum
import errno
import sys
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from microkernel.addrspace import AddressSpace
from microkernel.errors import KernelError
from microkernel.memory import PhysicalMemory
from microkernel.process import Process
from servers.cache.protocol import PageSpan
from servers.fs.protocol import FileExtent, FsInfo
from servers.vfs.abi import PAGE_SIZE, PAGES_PER_MAP_PAGE, WINDOW_DATA, map_pages_for
from servers.vfs.filemap_writer import FileMapWriter
from servers.vfs.pages import FileState, FileStatePage, ProcessFilePage
from servers.vfs.protocol import OpenFlags

MAX_PART_PAGES: Final = 1024  # one part maps at most 4 MiB
MAX_CALL_PAGES: Final = 4096  # one CachePart fetches at most 16 MiB (as parts of 4 MiB)
UP_FRONT_PAGES: Final = 4096  # an open maps at most 16 MiB of pages it already has
SMALL_FILE_PAGES: Final = 16  # an open of a file this small (64 KiB) fetches it at once
UP_FRONT_RUNS: Final = 16  # and maps at most this many runs (FileMap parts) at once
RETAIN_FILES: Final = 256  # closed files whose pages stay known (docs/architecture.md §6)
RETAIN_PAGES: Final = 16384  # and at most this many pages (64 MiB) in all
MAX_OFFSET: Final = (1 << 63) - 1


class BadHandle(KernelError):
    default_errno = errno.EBADF


class WindowState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


Span = tuple[int, int]  # file pages [first, end)
PRIVATE: Final = 1  # run flag: private frames of the copy path (no cache page behind them)
DIRTY: Final = 2  # run flag: stored into since the last writeback
_ALL: Final = 1 << 62  # past any file page
_ANY_TO_ONE: Final = bytes([0] + [1] * 255)  # a translation: non-zero bytes become 1


class FilePage(msgspec.Struct, gc=False):
    """One cached 4 KiB page of a file, as one record: a private copy (copy path) or a
    snapshot of a zero-copy page (:meth:`FilePages.get`).

    Only the copy path keeps these (a private page knows the cache bytes it came
    from, ``sources``); zero-copy pages live in :class:`FilePages` runs.
    """

    phys: int
    cache_lba: int | None  # the cache page mapped as is; None for a private frame
    sources: tuple[tuple[int, int, int, int], ...] = ()  # copy path: (cache page, offset in
    # it, offset in this page, length)
    dirty: bool = False


class FilePages:
    """A file's cached pages as sorted runs: (first page, end, first frame, first cache page, flags).

    File page ``first + k`` of a run is frame ``phys + k * 4096`` and cache page
    ``lba + k * spp`` (or a private frame when the run is ``PRIVATE``). Runs never
    overlap; neighbours merge when they continue each other in both and have the
    same flags, and a change to some pages splits a run at their edges, so the
    per-page flags stay exact. Five array columns, no object per page: a 256 MiB
    file read in 16 MiB calls is a few dozen runs. Private pages of the copy path
    also keep their :class:`FilePage` record (``copies``: where their bytes go back).
    """

    __slots__ = ("copies", "end", "first", "flags", "lba", "pages", "phys", "spp")

    def __init__(self) -> None:
        self.first = array("q")
        self.end = array("q")
        self.phys = array("q")
        self.lba = array("q")
        self.flags = bytearray()
        self.spp = 1  # sectors per cache page (the volume's, set by the first put)
        self.pages = 0
        self.copies: dict[int, FilePage] = {}

    # -- reading
    def __len__(self) -> int:
        return self.pages

    def __bool__(self) -> bool:
        return self.pages > 0

    def __contains__(self, page: object) -> bool:
        return isinstance(page, int) and self._find(page) >= 0

    def __iter__(self) -> Iterator[int]:
        """Every page, ascending (audits and tests; the driver works on runs)."""
        for a, b in zip(self.first, self.end, strict=True):
            yield from range(a, b)

    def _find(self, page: int) -> int:
        j = bisect_right(self.first, page) - 1
        return j if j >= 0 and page < self.end[j] else -1

    def phys_of(self, page: int) -> int:
        """The frame holding ``page``, or -1."""
        j = self._find(page)
        return -1 if j < 0 else self.phys[j] + (page - self.first[j]) * PAGE_SIZE

    def get(self, page: int) -> FilePage | None:
        """One page as a record: a private page's own, or a snapshot of a cache page."""
        j = self._find(page)
        if j < 0:
            return None
        if self.flags[j] & PRIVATE:
            return self.copies[page]
        k = page - self.first[j]
        return FilePage(
            self.phys[j] + k * PAGE_SIZE, self.lba[j] + k * self.spp, dirty=bool(self.flags[j] & DIRTY)
        )

    def items(self) -> list[tuple[int, FilePage]]:
        """(page, record) of every page (tests and audits)."""
        return [(p, fp) for p in self if (fp := self.get(p)) is not None]

    def values(self) -> list[FilePage]:
        """The record of every page (tests and audits)."""
        return [fp for _, fp in self.items()]

    def pieces(self, lo: int = 0, hi: int = _ALL) -> list[tuple[int, int, int, int, int]]:
        """``(first, end, frame of first, cache page of first, flags)`` of the runs in ``[lo, hi)``."""
        first, end, spp = self.first, self.end, self.spp
        j = max(0, bisect_right(first, lo) - 1)
        out = []
        while j < len(first) and first[j] < hi:
            a, b = max(first[j], lo), min(end[j], hi)
            if a < b:
                k = a - first[j]
                out.append((a, b, self.phys[j] + k * PAGE_SIZE, self.lba[j] + k * spp, self.flags[j]))
            j += 1
        return out

    def gaps(self, lo: int, hi: int) -> list[Span]:
        """The spans of ``[lo, hi)`` holding no page."""
        out: list[Span] = []
        at = lo
        for a, b, *_ in self.pieces(lo, hi):
            if a > at:
                out.append((at, a))
            at = b
        if at < hi:
            out.append((at, hi))
        return out

    def covers(self, lo: int, hi: int) -> bool:
        return not self.gaps(lo, hi)

    # -- changing
    def _split(self, page: int) -> int:
        """Make ``page`` start a run if it is inside one; the index of the first run at or after it."""
        j = bisect_right(self.first, page) - 1
        if j < 0 or page >= self.end[j]:
            return j + 1
        start = self.first[j]
        if start == page:
            return j
        k = page - start
        self.first.insert(j + 1, page)
        self.end.insert(j + 1, self.end[j])
        self.phys.insert(j + 1, self.phys[j] + k * PAGE_SIZE)
        self.lba.insert(j + 1, self.lba[j] + k * self.spp)
        self.flags.insert(j + 1, self.flags[j])
        self.end[j] = page
        return j + 1

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        """Split at ``lo`` and ``hi``: runs ``i .. k-1`` then lie wholly inside ``[lo, hi)``."""
        i = self._split(lo)
        return i, self._split(hi)

    def _merge(self, i: int, k: int) -> None:
        """Merge runs ``i-1 .. k`` with their left neighbours wherever they continue them."""
        first, end, phys, lba, flags = self.first, self.end, self.phys, self.lba, self.flags
        for j in range(min(k, len(first) - 1), max(i, 1) - 1, -1):
            n = end[j - 1] - first[j - 1]
            if (
                end[j - 1] == first[j]
                and flags[j - 1] == flags[j]
                and phys[j] == phys[j - 1] + n * PAGE_SIZE
                and (flags[j] & PRIVATE or lba[j] == lba[j - 1] + n * self.spp)
            ):
                end[j - 1] = end[j]
                del first[j], end[j], phys[j], lba[j], flags[j]

    def put(self, page: int, count: int, phys: int, lba: int, spp: int, flags: int = 0) -> None:
        """``count`` pages from ``page`` are frames from ``phys``, cache pages from ``lba``
        (``spp`` sectors apart); whatever held them before is forgotten."""
        if count <= 0:
            return
        self.spp = spp
        i, k = self._span(page, page + count)
        gone = sum(self.end[j] - self.first[j] for j in range(i, k))
        for j in range(i, k):
            if self.flags[j] & PRIVATE:
                for p in range(self.first[j], self.end[j]):
                    self.copies.pop(p, None)
        self.first[i:k] = array("q", [page])
        self.end[i:k] = array("q", [page + count])
        self.phys[i:k] = array("q", [phys])
        self.lba[i:k] = array("q", [lba])
        self.flags[i:k] = bytes([flags])
        self.pages += count - gone
        self._merge(i, i + 1)

    def put_private(self, page: int, record: FilePage) -> None:
        """A private page of the copy path (its record keeps where its bytes go back)."""
        self.put(page, 1, record.phys, -1, self.spp, PRIVATE)
        self.copies[page] = record

    def remove(self, lo: int, hi: int) -> list[tuple[int, int, int, int, int]]:
        """Forget the pages in ``[lo, hi)``; returns them as :meth:`pieces`."""
        out = self.pieces(lo, hi)
        if not out:
            return out
        i, k = self._span(lo, hi)
        for a, b, _, _, fl in out:
            self.pages -= b - a
            if fl & PRIVATE:
                for p in range(a, b):
                    self.copies.pop(p, None)
        del self.first[i:k], self.end[i:k], self.phys[i:k], self.lba[i:k], self.flags[i:k]
        self._merge(i, i)
        return out

    def change(self, lo: int, hi: int, add: int = 0, drop: int = 0) -> None:
        """Set the flag bits ``add`` and clear ``drop`` on the pages in ``[lo, hi)``."""
        if not self.pieces(lo, hi):
            return
        i, k = self._span(lo, hi)
        flags = self.flags
        for j in range(i, k):
            flags[j] = (flags[j] | add) & ~drop & 0xFF
        self._merge(i, k)

    def take(self, keep: Callable[[int, int, int], bool]) -> FilePages:
        """Move the runs for which ``keep(first, end, flags)`` holds into a new table."""
        out = FilePages()
        out.spp = self.spp
        for a, b, phys, lba, fl in self.pieces():
            if keep(a, b, fl):
                self.remove(a, b)
                out.put(a, b - a, phys, lba, self.spp, fl)
        return out

    def heap_bytes(self) -> int:
        """Bytes of Python heap the table takes (for the per-page figure)."""
        columns = (self.first, self.end, self.phys, self.lba, self.flags, self.copies)
        return sys.getsizeof(self) + sum(sys.getsizeof(c) for c in columns)


class PageSerials:
    """The serial of the latest mapping of each file page of a window, as runs.

    A part's pages get one serial when they are mapped; a removed part's unmap
    (after its grace periods) spares the pages mapped again since (another serial).
    """

    __slots__ = ("end", "first", "serial")

    def __init__(self) -> None:
        self.first = array("q")
        self.end = array("q")
        self.serial = array("q")

    def assign(self, lo: int, hi: int, serial: int) -> None:
        first, end, ser = self.first, self.end, self.serial
        i = bisect_right(first, lo) - 1
        if i >= 0 and end[i] > lo:  # a run reaching into [lo, hi): keep its head
            if first[i] < lo:
                first.insert(i + 1, lo)
                end.insert(i + 1, end[i])
                ser.insert(i + 1, ser[i])
                end[i] = lo
                i += 1
        else:
            i += 1
        k = i
        while k < len(first) and first[k] < hi:
            k += 1
        if k > i and end[k - 1] > hi:  # the last one reaches past: keep its tail
            first.insert(k, hi)
            end.insert(k, end[k - 1])
            ser.insert(k, ser[k - 1])
        self.first[i:k] = array("q", [lo])
        self.end[i:k] = array("q", [hi])
        self.serial[i:k] = array("q", [serial])

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(first, end, serial)`` of the runs in ``[lo, hi)``."""
        first, end = self.first, self.end
        j = max(0, bisect_right(first, lo) - 1)
        out = []
        while j < len(first) and first[j] < hi:
            a, b = max(first[j], lo), min(end[j], hi)
            if a < b:
                out.append((a, b, self.serial[j]))
            j += 1
        return out


@dataclass(eq=False, slots=True)
class CentralFile:
    key: tuple[str, int]  # (file system server, the file system's file id)
    fs_handle: int
    info: FsInfo
    state_frame: int
    state: FileStatePage
    pages: FilePages = field(default_factory=FilePages)
    inflight: dict[int, range] = field(default_factory=dict)  # fetch tag -> its file pages
    windows: set[Window] = field(default_factory=set)
    modified: bool = False
    data_written: bool = False  # the last close wrote its growth's pages (FsClose says so)
    published: int = -1  # the size processes see (-1: the size on disk, ``info.size``)
    reserved: int = 0  # bytes a writer had the file system allocate (FsSetSize allocate_only)
    handed: set[int] = field(default_factory=set)  # pages past the size on disk whose bytes
    # went to the cache (a store racing its publish): what the cache holds of them is data
    retain: bool = True  # keep its clean pages after the last close (False: its name was unlinked)

    @property
    def fs(self) -> str:
        return self.key[0]

    @property
    def size(self) -> int:
        """The published size: what every process sees in the state page."""
        return self.info.size if self.published < 0 else self.published

    @property
    def fat_size(self) -> int:
        """Bytes with clusters behind them: the size on disk or a writer's reservation.

        The size in the directory entry (``info.size``) never covers a
        reservation: it grows only when the data below it is in the cache
        (``Flusher.publish``), so a crash cannot turn a reservation into size.
        """
        return max(self.info.size, self.reserved)

    def publish(self) -> None:
        """Write the size and metadata into the state page (seqlock, see ``pages.py``)."""
        info = self.info
        self.state.write(
            FileState(self.size, info.alloc_size, info.attributes, int(info.mtime * 1e9), info.name)
        )


@dataclass(eq=False, slots=True)
class Window:
    """One open handle: the file's window in one process."""

    handle: int
    proc: Process
    file: CentralFile
    space: AddressSpace
    flags: int
    filemap_frame: int
    procpage_frame: int
    writer: FileMapWriter
    procpage: ProcessFilePage
    state: WindowState = WindowState.OPENING
    ops: int = 0  # operations admitted and not yet finished
    dirty_frames: dict[int, int] = field(default_factory=dict)  # dirty-map page -> frame
    serials: PageSerials = field(default_factory=PageSerials)  # pages -> serial of their mapping
    serial: int = 0  # mappings made into this window so far
    parts: dict[int, tuple[int, int]] = field(default_factory=dict)  # part -> (first page, n)
    ages: dict[int, int] = field(default_factory=dict)
    next_page: int = 0  # the page after the last part asked for (read-ahead's sequential test)

    @property
    def writable(self) -> bool:
        return bool(self.flags & OpenFlags.WRITE)

    @property
    def frames(self) -> list[int]:
        """Every frame the window owns (control pages and dirty map)."""
        return [self.filemap_frame, self.procpage_frame, *self.dirty_frames.values()]

    @property
    def mapped(self) -> set[int]:
        """The file pages linked into a FileMap part (audits and tests; the driver
        works on the parts' spans, :func:`linked_spans`)."""
        return {p for first, n in self.parts.values() for p in range(first, first + n)}


@dataclass(eq=False, slots=True)
class RetainedFile:
    """A closed file's clean cache pages, still pinned by the kernel file driver.

    Kept after the last close so that a new open of the same file (the same
    file-system identity, size and native facts) maps them at once, without a
    message to the cache. The frames are the cache's own pages for those
    sectors, pinned once for the driver: every write through the cache lands in
    them, and the cache neither evicts nor replaces a pinned page, so they stay
    the file's current bytes until a GiveBack (or the LRU) releases them.
    """

    key: tuple[str, int]
    name: str
    size: int
    native: dict[str, str | int]
    pages: FilePages

    def matches(self, info: FsInfo) -> bool:
        """The file the file system opened is still the one whose pages these are."""
        return info.size == self.size and info.native == self.native and not info.is_dir


class RetainedFiles:
    """The LRU of closed files' page records, keyed by (file system, file id).

    Bounded by file count and by pages: putting a record in returns the records
    pushed out, whose pins the caller releases.
    """

    def __init__(self, max_files: int = RETAIN_FILES, max_pages: int = RETAIN_PAGES) -> None:
        self.max_files = max_files
        self.max_pages = max_pages
        self.records: OrderedDict[tuple[str, int], RetainedFile] = OrderedDict()
        self.pages = 0

    def __len__(self) -> int:
        return len(self.records)

    def put(self, record: RetainedFile) -> list[RetainedFile]:
        """Remember ``record`` (newest); returns what no longer fits (oldest first)."""
        out = [old] if (old := self.take(record.key)) is not None else []
        if not record.pages or len(record.pages) > self.max_pages:
            return [*out, record]
        self.records[record.key] = record
        self.pages += len(record.pages)
        if len(self.records) > self.max_files:  # a sixteenth more at once: one Release for them
            while len(self.records) > self.max_files - self.max_files // 16:
                out.append(self._pop_oldest())
        while self.pages > self.max_pages:
            out.append(self._pop_oldest())
        return out

    def take(self, key: tuple[str, int]) -> RetainedFile | None:
        """Remove and return the record of ``key`` (an open adopts it, or drops it)."""
        record = self.records.pop(key, None)
        if record is not None:
            self.pages -= len(record.pages)
        return record

    def refresh(self, key: tuple[str, int], info: FsInfo) -> bool:
        """The size is published: the record of ``key`` takes the file's final facts.

        False when the record is gone meanwhile (a GiveBack took it).
        """
        record = self.records.get(key)
        if record is None or record.size != info.size:
            return False
        record.name, record.native = info.name, info.native
        return True

    def oldest(self, pages: int) -> list[RetainedFile]:
        """Remove the least recently closed records until they hold ``pages`` pages."""
        out: list[RetainedFile] = []
        freed = 0
        while self.records and freed < pages:
            out.append(self._pop_oldest())
            freed += len(out[-1].pages)
        return out

    def named(self, fs: str, name: str) -> list[RetainedFile]:
        """Remove the records of ``fs`` whose file had this name (an unlink or a rename)."""
        folded = name.casefold()
        keys = [k for k, r in self.records.items() if k[0] == fs and r.name.casefold() == folded]
        return [r for k in keys if (r := self.take(k)) is not None]

    def clear(self) -> list[RetainedFile]:
        return self.oldest(self.pages + 1)

    def _pop_oldest(self) -> RetainedFile:
        _, record = self.records.popitem(last=False)
        self.pages -= len(record.pages)
        return record


def take_retained(cfile: CentralFile, cluster_size: int) -> FilePages:
    """Move the pages of a closing file worth keeping out of it: clean cache pages inside the size.

    Private frames of the copy path are not kept (they are charged to a
    process); pages past the size held a reservation the last close frees, and
    so may the end of the page the size ends in (:func:`whole_pages`).
    """
    end = whole_pages(cfile.size, cluster_size)
    if end < _ALL:
        cfile.pages._split(end)
    return cfile.pages.take(lambda a, b, fl: b <= end and not fl & (PRIVATE | DIRTY))


def up_front_pages(cfile: CentralFile, limit: int = UP_FRONT_PAGES) -> list[int]:
    """What an open maps before it replies: the cached pages from the start of the file.

    The cached pages below the size, up to ``limit`` pages and ``UP_FRONT_RUNS``
    runs (scattered pages are left to misses: each run is a FileMap part); a
    small file whole, fetched by the open itself where not cached.
    """
    end = min(pages_of(cfile.size), limit, WINDOW_DATA // PAGE_SIZE)
    if end <= SMALL_FILE_PAGES:
        return list(range(end))
    out: list[int] = []
    for a, b in merged_spans((a, b) for a, b, *_ in cfile.pages.pieces(0, end))[:UP_FRONT_RUNS]:
        out.extend(range(a, b))
    return out


# ------------------------------------------------------------------ window lifetime
def opened(window: Window) -> None:
    """OPENING -> OPEN: the handle may be used."""
    if window.state is not WindowState.OPENING:
        raise BadHandle(f"handle {window.handle} is {window.state.value}, not opening")
    window.state = WindowState.OPEN


def begin_op(window: Window) -> None:
    """Admit an operation on the handle: only while OPEN."""
    if window.state is not WindowState.OPEN:
        raise BadHandle(f"handle {window.handle} is {window.state.value}")
    window.ops += 1


def end_op(window: Window) -> bool:
    """An operation ended; True when it was the last one a closing window waited for."""
    window.ops -= 1
    assert window.ops >= 0, "end_op without begin_op"
    return window.state is WindowState.CLOSING and window.ops == 0


def begin_close(window: Window) -> bool:
    """OPEN/OPENING -> CLOSING; False when a close is already under way (or done)."""
    if window.state in (WindowState.CLOSING, WindowState.CLOSED):
        return False
    window.state = WindowState.CLOSING
    return True


def finish_close(window: Window) -> list[int]:
    """CLOSING -> CLOSED once idle: the frames that may be released now."""
    if window.state is not WindowState.CLOSING or window.ops:
        raise BadHandle(f"handle {window.handle} is not an idle closing window")
    window.state = WindowState.CLOSED
    window.file.windows.discard(window)
    return window.frames


def may_map(window: Window) -> bool:
    """Nothing is mapped into a window that is not OPEN."""
    return window.state is WindowState.OPEN


# ---------------------------------------------------------------------- requests
def check_range(position: int, size: int) -> None:
    """Offsets and sizes from a process: non-negative, and their end fits an off_t."""
    if position < 0 or size < 0 or position + size > MAX_OFFSET:
        raise OSError(errno.EINVAL, f"bad file range {position}+{size}")


def part_pages(window: Window, position: int, size: int) -> range:
    """The file pages a ``CachePart`` at ``position`` maps (empty: at or past the end).

    A writer may map its reservation (beyond the published size); one call
    brings in at most ``MAX_CALL_PAGES`` (one fetch, mapped as FileMap parts of at
    most ``MAX_PART_PAGES``) and never leaves the window.
    """
    check_range(position, size)
    cfile = window.file
    limit = cfile.fat_size if window.writable else cfile.size
    if position >= limit:
        return range(0)
    first = position // PAGE_SIZE
    end = min(position + max(size, 1), round_up(limit), WINDOW_DATA)
    return range(first, min(pages_of(end), first + MAX_CALL_PAGES))


def missing_spans(cfile: CentralFile, spans: Iterable[Span]) -> list[Span]:
    """The parts of ``spans`` neither cached nor being fetched (runs, not pages)."""
    out = [g for lo, hi in spans for g in cfile.pages.gaps(lo, hi)]
    return without(out, ((run.start, run.stop) for run in cfile.inflight.values()))


def missing_pages(cfile: CentralFile, pages: Sequence[int]) -> list[int]:
    """Pages neither cached nor being fetched (tests; the driver uses :func:`missing_spans`)."""
    return [p for a, b in missing_spans(cfile, spans_of(pages)) for p in range(a, b)]


def without(spans: Iterable[Span], cuts: Iterable[Span]) -> list[Span]:
    """The parts of ``spans`` outside every one of ``cuts``."""
    out = list(spans)
    for a, b in cuts:
        out = [
            piece
            for lo, hi in out
            for piece in ([(lo, hi)] if b <= lo or a >= hi else ((lo, a), (b, hi)))
            if piece[0] < piece[1]
        ]
    return out


def overlaps(run: range, spans: Iterable[Span]) -> bool:
    """Whether ``run`` (consecutive pages) meets any of ``spans``."""
    return any(run.start < hi and lo < run.stop for lo, hi in spans)


def linked_spans(window: Window) -> list[Span]:
    """The spans of file pages linked into the window's FileMap parts, sorted and merged."""
    return merged_spans(sorted((first, first + n) for first, n in window.parts.values()))


def unmapped_spans(window: Window, spans: Iterable[Span]) -> list[Span]:
    """The parts of ``spans`` not yet linked into the window."""
    return without(spans, linked_spans(window))


def unmapped_runs(window: Window, pages: Sequence[int]) -> list[list[int]]:
    """Runs of the pages not yet linked into the window (tests; see :func:`unmapped_spans`)."""
    return [list(range(a, b)) for a, b in unmapped_spans(window, spans_of(pages))]


def dirty_map_pages_needed(window: Window, first: int, count: int) -> list[int]:
    """Dirty-map pages a new part needs that the window does not have yet."""
    return [m for m in map_pages_for(first, count) if m not in window.dirty_frames]


def record_mapping(window: Window, first: int, count: int, index: int) -> None:
    """A run of pages is mapped and linked as FileMap part ``index``."""
    window.serial += 1  # one new serial for the whole run: a page mapped again differs
    window.serials.assign(first, first + count, window.serial)
    window.parts[index] = (first, count)


def forget_part(window: Window, index: int) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Unlink part ``index``: (first page, count, serials to unmap after the grace).

    The pages count as unmapped at once (a miss maps them again under a new
    part); the real unmap waits out the grace and spares pages mapped again.
    """
    first, n = window.parts.pop(index)
    window.ages.pop(index, None)
    return first, n, window.serials.pieces(first, first + n)


def stale_spans(window: Window, serials: list[tuple[int, int, int]]) -> list[Span]:
    """Pages of a removed part still unmapped since: safe to unmap now."""
    linked = linked_spans(window)
    out: list[Span] = []
    for lo, hi, serial in serials:
        for a, b, now in window.serials.pieces(lo, hi):
            if now == serial:
                out.extend(without([(a, b)], linked))
    return merged_spans(out)


# ------------------------------------------------------------------ dirty pages
def take_dirty(window: Window, memory: PhysicalMemory, first: int, count: int) -> list[int]:
    """Read and clear the dirty-map bytes of pages ``first .. first+count-1``.

    Clearing before the writeback means a store racing with it sets the byte
    again and is written next time, instead of being forgotten.
    """
    out: list[int] = []
    end = first + count
    for m in map_pages_for(first, count):
        frame = window.dirty_frames.get(m)
        if frame is None:
            continue
        lo, hi = max(first, m * PAGES_PER_MAP_PAGE), min(end, (m + 1) * PAGES_PER_MAP_PAGE)
        view = memory.view(frame + lo - m * PAGES_PER_MAP_PAGE, hi - lo)
        chunk = bytes(view)
        if chunk.count(0) == len(chunk):
            continue
        marks = chunk.translate(_ANY_TO_ONE)  # 1 where the snapshot saw a store
        a = marks.find(1)
        while a >= 0:  # clear exactly the bytes seen set, a run at a time
            b = marks.find(0, a)
            b = len(marks) if b < 0 else b
            view[a:b] = bytes(b - a)
            out.extend(range(lo + a, lo + b))
            a = marks.find(1, b)
    return out


def collect_window(window: Window, memory: PhysicalMemory) -> list[int]:
    """Every dirty page of the window, taken from its whole dirty map.

    The whole map, not only the linked parts: a part being removed may still
    take stores made through a lookup that began before its removal.
    """
    pages: list[int] = []
    for m in sorted(window.dirty_frames):
        pages.extend(take_dirty(window, memory, m * PAGES_PER_MAP_PAGE, PAGES_PER_MAP_PAGE))
    return pages


def mark_dirty(cfile: CentralFile, pages: Iterable[int]) -> None:
    """The pages were stored into: their runs take the ``DIRTY`` flag (split at their edges)."""
    for a, b in spans_of(pages if isinstance(pages, Sequence) else list(pages)):
        if cfile.pages.pieces(a, b):
            cfile.pages.change(a, b, add=DIRTY)
            cfile.modified = True


def writeback_plan(cfile: CentralFile) -> tuple[list[int], list[FilePage]]:
    """Take the dirty pages: (cache pages to mark dirty, private pages to copy back).

    Pages past the file system's size have no clusters behind them and are
    dropped clean. Pages past the size on disk (a writer's reservation) go to
    the cache too and are remembered in ``handed``: their cache pages hold data.
    """
    marked: list[int] = []
    private: list[FilePage] = []
    if not cfile.modified:  # ``mark_dirty`` sets it with any dirty flag: nothing to take
        return marked, private
    table = cfile.pages
    clusters = pages_of(cfile.fat_size)
    on_disk = cfile.info.size // PAGE_SIZE  # the first page reaching past the size on disk
    for a, b, _, lba, fl in table.pieces():
        if not fl & DIRTY:
            continue
        table.change(a, b, drop=DIRTY)
        b = min(b, clusters)
        if a >= b:
            continue
        if b > on_disk:
            cfile.handed.update(range(max(a, on_disk), b))
        if fl & PRIVATE:
            private.extend(table.copies[p] for p in range(a, b))
        else:
            marked.extend(range(lba, lba + (b - a) * table.spp, table.spp))
    return marked, private


def idle_spans(cfile: CentralFile) -> list[Span]:
    """Cached pages no window has linked: what a give-back may drop."""
    out = merged_spans((a, b) for a, b, *_ in cfile.pages.pieces())
    for window in cfile.windows:
        out = unmapped_spans(window, out)
    return out


def idle_within(cfile: CentralFile, spans: list[Span]) -> list[Span]:
    """The pages of ``spans`` (sorted, apart) that :func:`idle_spans` would drop."""
    out: list[Span] = []
    for a, b in idle_spans(cfile):
        out.extend((max(a, lo), min(b, hi)) for lo, hi in spans if lo < b and a < hi)
    return out


def idle_pages(cfile: CentralFile) -> list[int]:
    """The pages of :func:`idle_spans` one by one (tests)."""
    return [p for a, b in idle_spans(cfile) for p in range(a, b)]


def every_span(cfile: CentralFile) -> list[Span]:
    """All of a file's pages (a last close drops what it does not keep)."""
    return [(0, _ALL)]


def whole_pages(size: int, cluster_size: int) -> int:
    """Pages ``[0, n)`` that lie wholly in the clusters a file of ``size`` bytes keeps.

    With clusters smaller than a page, the clusters left after a shrink (or
    after a last close gives a reservation back) may end inside the size's last
    page: the rest of that page's 4 KiB goes back to the FAT, to be another
    file's. A zero-copy page there would still map it: the file's next growth
    (new clusters elsewhere) would be written into the freed clusters and never
    into its own, and a later owner's bytes would show through the mapping. So
    that page is not kept as is; fetched again, it is a copy whose sources name
    the file's own clusters only (docs/fat.md, "fsynced data lost on FAT12").
    """
    return min(pages_of(size), -(-size // cluster_size) * cluster_size // PAGE_SIZE)


def pages_from(cfile: CentralFile, size: int) -> list[Span]:
    """Cached pages at or past a new size (dropped by a shrink)."""
    return [(pages_of(size), _ALL)]


def drop_spans(cfile: CentralFile, spans: Iterable[Span]) -> tuple[list[PageSpan], list[int]]:
    """Forget the pages in ``spans``: (cache page spans to release, private frames to free)."""
    return drop_spans_of(cfile.pages, spans)


def drop_spans_of(
    table: FilePages, spans: Iterable[Span] = ((0, _ALL),)
) -> tuple[list[PageSpan], list[int]]:
    """:func:`drop_spans` on a page table (a retained record's, say)."""
    pins: list[PageSpan] = []
    frames: list[int] = []
    for lo, hi in spans:
        for a, b, phys, lba, fl in table.remove(lo, hi):
            if fl & PRIVATE:
                frames.extend(range(phys, phys + (b - a) * PAGE_SIZE, PAGE_SIZE))
            else:
                pins.append(PageSpan(lba, b - a))
    return pins, frames


def parts_reaching(window: Window, size: int) -> list[int]:
    """Parts reaching past a new size (unmapped before the clusters go back)."""
    keep = pages_of(size)
    return [i for i, (first, n) in window.parts.items() if first + n > keep]


# ---------------------------------------------------------------------- page math
def pages_of(nbytes: int) -> int:
    return -(-nbytes // PAGE_SIZE)


def round_up(nbytes: int) -> int:
    return pages_of(nbytes) * PAGE_SIZE


def spans_of(pages: Sequence[int]) -> list[Span]:
    """``[first, end)`` spans of page numbers (a range or a sorted run: one step in C)."""
    if isinstance(pages, range) and pages.step == 1:
        return [(pages.start, pages.stop)] if pages else []
    if not pages:
        return []
    lo, hi = pages[0], pages[-1] + 1
    if hi - lo == len(pages) and list(pages) == list(range(lo, hi)):
        return [(lo, hi)]
    return [(r[0], r[-1] + 1) for r in runs(pages)]


def merged_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted spans with the ones that touch or overlap joined."""
    out: list[Span] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def runs(pages: Iterable[int]) -> list[list[int]]:
    """Split page numbers into sorted runs of consecutive pages."""
    ordered = sorted(pages)
    if ordered and ordered[-1] - ordered[0] == len(ordered) - 1:  # one run (no duplicates)
        return [ordered] if len(set(ordered)) == len(ordered) else _runs_of(ordered)
    return _runs_of(ordered)


def _runs_of(ordered: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for p in ordered:
        if out and out[-1][-1] == p - 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def page_lba(lba: int, ss: int, align: int) -> int:
    """First logical sector of the cache page holding ``lba``."""
    spp = PAGE_SIZE // ss
    origin = align % spp
    return lba - (lba - origin) % spp


def direct_spans(extents: list[FileExtent], ss: int, align: int) -> list[tuple[int, int, int]]:
    """``(first file page, end, its cache page)`` of each extent's pages that *are* cache pages.

    A file page qualifies when its 4 KiB lie inside one extent and start on a
    cache page boundary; within an extent that holds for all pages or for none,
    so each extent gives at most one span.
    """
    out: list[tuple[int, int, int]] = []
    for e in extents:
        first = -(-e.file_offset // PAGE_SIZE)
        end = (e.file_offset + e.count * ss) // PAGE_SIZE
        if first >= end or (first * PAGE_SIZE - e.file_offset) % ss:
            continue
        lba0 = e.lba + (first * PAGE_SIZE - e.file_offset) // ss
        if page_lba(lba0, ss, align) == lba0:
            out.append((first, end, lba0))
    return out


def sources_below(
    sources: tuple[tuple[int, int, int, int], ...], limit: int
) -> tuple[tuple[int, int, int, int], ...]:
    """A private page's sources cut at byte ``limit`` of the page (a shrink, or before a growth)."""
    out = []
    for plba, inpage, dst, n in sources:
        if dst < limit:
            out.append((plba, inpage, dst, min(n, limit - dst)))
    return tuple(out)


def byte_sources(
    lo: int, hi: int, extents: list[FileExtent], ss: int, align: int
) -> list[tuple[int, int, int, int]]:
    """(sector, byte offset in sector, offset in the file page, length) covering file bytes lo..hi.

    Pieces never cross a cache page boundary, so each is one copy from one frame.
    """
    origin = align % (PAGE_SIZE // ss)
    out = []
    for e in extents:
        e_lo, e_hi = e.file_offset, e.file_offset + e.count * ss
        a, b = max(lo, e_lo), min(hi, e_hi)
        pos = a
        while pos < b:
            sector = e.lba + (pos - e_lo) // ss
            in_sector = (pos - e_lo) % ss
            n = min(b - pos, PAGE_SIZE - (((sector - origin) * ss + in_sector) % PAGE_SIZE))
            out.append((sector, in_sector, pos - lo, n))
            pos += n
    return out
