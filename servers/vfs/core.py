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
(file page -> frame). Dirt is tracked per 4 KiB page: the library sets a byte in
the window's dirty map (``abi.py``) for each page it stores into; the driver
takes those bytes into ``FilePage.dirty`` and hands exactly those pages to the
cache.
"""

from __future__ import annotations

import enum
import errno
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from microkernel.addrspace import AddressSpace
from microkernel.errors import KernelError
from microkernel.memory import PhysicalMemory
from microkernel.process import Process
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


class FilePage(msgspec.Struct, gc=False):
    """One cached 4 KiB page of a file: a cache frame (zero-copy) or a private copy.

    Untracked by the garbage collector (``gc=False``: no cycles), since a large
    read creates thousands at once.
    """

    phys: int
    cache_lba: int | None  # the cache page mapped as is; None for a private frame
    sources: tuple[tuple[int, int, int, int], ...] = ()  # copy path: (cache page, offset in
    # it, offset in this page, length)
    dirty: bool = False


@dataclass(eq=False, slots=True)
class CentralFile:
    key: tuple[str, int]  # (file system server, the file system's file id)
    fs_handle: int
    info: FsInfo
    state_frame: int
    state: FileStatePage
    pages: dict[int, FilePage] = field(default_factory=dict)
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
    mapped: set[int] = field(default_factory=set)  # file pages linked into a FileMap part
    generation: dict[int, int] = field(default_factory=dict)  # page -> serial of its mapping
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
    pages: dict[int, FilePage]

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
        while len(self.records) > self.max_files or self.pages > self.max_pages:
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


def retain_plan(cfile: CentralFile) -> dict[int, FilePage]:
    """The pages of a closing file worth keeping: clean cache pages inside the size.

    Private frames of the copy path are not kept (they are charged to a
    process); pages past the size held a reservation the last close frees.
    """
    end = pages_of(cfile.size)
    return {
        p: fp
        for p, fp in cfile.pages.items()
        if p < end and fp.cache_lba is not None and not fp.dirty
    }


def up_front_pages(cfile: CentralFile, limit: int = UP_FRONT_PAGES) -> list[int]:
    """What an open maps before it replies: the cached pages from the start of the file.

    The cached pages below the size, up to ``limit`` pages and ``UP_FRONT_RUNS``
    runs (scattered pages are left to misses: each run is a FileMap part); a
    small file whole, fetched by the open itself where not cached.
    """
    end = min(pages_of(cfile.size), limit, WINDOW_DATA // PAGE_SIZE)
    if end <= SMALL_FILE_PAGES:
        return list(range(end))
    pages = cfile.pages
    out = [p for p in range(end) if p in pages] if pages else []
    if out and out[-1] - out[0] != len(out) - 1:  # more than one run: keep the first few
        breaks = [i for i in range(1, len(out)) if out[i] != out[i - 1] + 1]
        if len(breaks) >= UP_FRONT_RUNS:
            out = out[: breaks[UP_FRONT_RUNS - 1]]
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


def part_pages(window: Window, position: int, size: int) -> list[int]:
    """The file pages a ``CachePart`` at ``position`` maps (empty: at or past the end).

    A writer may map its reservation (beyond the published size); one call
    brings in at most ``MAX_CALL_PAGES`` (one fetch, mapped as FileMap parts of at
    most ``MAX_PART_PAGES``) and never leaves the window.
    """
    check_range(position, size)
    cfile = window.file
    limit = cfile.fat_size if window.writable else cfile.size
    if position >= limit:
        return []
    first = position // PAGE_SIZE
    end = min(position + max(size, 1), round_up(limit), WINDOW_DATA)
    return list(range(first, min(pages_of(end), first + MAX_CALL_PAGES)))


def missing_pages(cfile: CentralFile, pages: Iterable[int]) -> list[int]:
    """Pages neither cached nor being fetched (fetches are runs: one range test per fetch)."""
    cached = cfile.pages
    out = [p for p in pages if p not in cached] if cached else list(pages)
    for run in cfile.inflight.values():
        if out and overlaps(run, out):
            out = [p for p in out if not run.start <= p < run.stop]
    return out


def overlaps(run: range, pages: list[int]) -> bool:
    """Whether ``run`` (consecutive pages) holds any of ``pages`` (non-empty)."""
    if run.start > max(pages) or run.stop <= min(pages):
        return False
    return any(run.start <= p < run.stop for p in pages)


def unmapped_runs(window: Window, pages: Iterable[int]) -> list[list[int]]:
    """Runs of the pages not yet linked into the window."""
    mapped = window.mapped
    return runs([p for p in pages if p not in mapped] if mapped else pages)


def dirty_map_pages_needed(window: Window, run: list[int]) -> list[int]:
    """Dirty-map pages a new part needs that the window does not have yet."""
    return [m for m in map_pages_for(run[0], len(run)) if m not in window.dirty_frames]


def record_mapping(window: Window, run: list[int], index: int) -> None:
    """A run of pages is mapped and linked as FileMap part ``index``."""
    window.mapped.update(run)
    window.serial += 1  # one new serial for the whole run: a page mapped again differs
    window.generation.update(dict.fromkeys(run, window.serial))
    window.parts[index] = (run[0], len(run))


def forget_part(window: Window, index: int) -> tuple[int, int, dict[int, int]]:
    """Unlink part ``index``: (first page, count, generations to unmap after the grace).

    The pages count as unmapped at once (a miss maps them again under a new
    part); the real unmap waits out the grace and spares pages mapped again.
    """
    first, n = window.parts.pop(index)
    window.ages.pop(index, None)
    window.mapped.difference_update(range(first, first + n))
    return first, n, {p: window.generation.get(p, 0) for p in range(first, first + n)}


def stale_pages(window: Window, generations: dict[int, int]) -> list[int]:
    """Pages of a removed part still unmapped since: safe to unmap now."""
    return [
        p
        for p, g in generations.items()
        if p not in window.mapped and window.generation.get(p) == g
    ]


# ------------------------------------------------------------------ dirty pages
_SET_BYTES: Final = re.compile(rb"[^\x00]+")


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
        for run in _SET_BYTES.finditer(bytes(view)):  # runs of set bytes, found in C
            a, b = run.span()
            view[a:b] = bytes(b - a)
            out.extend(range(lo + a, lo + b))
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
    for p in pages:
        fp = cfile.pages.get(p)
        if fp is not None:
            fp.dirty = True
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
    for p, fp in cfile.pages.items():
        if not fp.dirty:
            continue
        fp.dirty = False
        if p * PAGE_SIZE >= cfile.fat_size:
            continue
        if (p + 1) * PAGE_SIZE > cfile.info.size:
            cfile.handed.add(p)
        if fp.cache_lba is not None:
            marked.append(fp.cache_lba)
        else:
            private.append(fp)
    return marked, private


def idle_pages(cfile: CentralFile) -> list[int]:
    """Cached pages no window has linked: what a give-back may drop."""
    return [p for p in cfile.pages if not any(p in w.mapped for w in cfile.windows)]


def pages_from(cfile: CentralFile, size: int) -> list[int]:
    """Cached pages at or past a new size (dropped by a shrink)."""
    keep = pages_of(size)
    return [p for p in cfile.pages if p >= keep]


def parts_reaching(window: Window, size: int) -> list[int]:
    """Parts reaching past a new size (unmapped before the clusters go back)."""
    keep = pages_of(size)
    return [i for i, (first, n) in window.parts.items() if first + n > keep]


# ---------------------------------------------------------------------- page math
def pages_of(nbytes: int) -> int:
    return -(-nbytes // PAGE_SIZE)


def round_up(nbytes: int) -> int:
    return pages_of(nbytes) * PAGE_SIZE


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
