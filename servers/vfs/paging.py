"""The read path of the kernel file driver: fetches, installing pages, parts in windows.

A miss (``CachePart``) that finds pages neither cached nor on their way starts
a *fetch*: ``MapRange`` to the file system, which sends ``CacheRead`` to the
cache, which answers here with ``SectorsReady`` (or ``CacheFailed``) under the
fetch's tag. A fetch belongs to the central file, not to the handle that
started it: it runs as its own task, every handle wanting its pages waits for
it, and a handle that closes stops waiting without disturbing the others. The
last close cancels the fetches of its file; pins that arrive for a cancelled
fetch are given back.

Tags are random 63-bit numbers; a notification is accepted only from the
cache and only for a tag this driver issued.

Removing a part from a FileMap follows the lock-free order of ``filemap.py``:
unlink now, clear the entry after one grace period, unmap after another; each
removal has an event that is set once its pages are unmapped, and whoever must
wait for that (a shrink, a give-back) waits for those events.
"""

from __future__ import annotations

import errno
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from microkernel.ipc import Endpoint, Envelope, Router
from microkernel.memory import PhysicalMemory
from microkernel.trace import current_corr, log
from servers.cache.protocol import CacheFailed, CacheRead, Extent, PageSpan, Release, SectorsReady
from servers.fs.protocol import FileExtent, FsVolume, Mapped, MapRange
from servers.vfs import core
from servers.vfs.abi import DATA_OFFSET, DIRTY_OFFSET, PAGE_SIZE
from servers.vfs.core import PRIVATE, BadHandle, CentralFile, FilePage, Span, Window
from servers.vfs.filemap import FileMapFull
from servers.vfs.opened import extents_for
from servers.vfs.second_chance import AGE_INITIAL, scan

GRACE_S: Final = 0.02  # removal -> clear entry -> unmap: longer than any prompt reader's lookup
FETCH_TIMEOUT_S: Final = 60.0  # a disk that never answers becomes ETIMEDOUT, not a hang
PARTS_BEFORE_SCAN: Final = 112  # a miss runs second chance once the FileMap is half full
ABANDONED_MAX: Final = 4096  # tags of given-up fetches remembered to return late pins
ENSURE_ATTEMPTS: Final = 4

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@dataclass(eq=False, slots=True)
class Fetch:
    """A MapRange/CacheRead in flight for some pages of a file."""

    tag: int
    cfile: CentralFile
    pages: range
    arrived: anyio.Event = field(default_factory=anyio.Event)  # SectorsReady or CacheFailed
    done: anyio.Event = field(default_factory=anyio.Event)  # pages installed (or failed)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ready: SectorsReady | None = None
    error: OSError | None = None
    installed: bool = False
    owner: str = "vfs"  # who pays for the copy path's private frames (the asking process)
    extents: list[FileExtent] | None = None  # known at the start (opened.py): no MapRange


class Pager:
    """Fetches and parts for the kernel file driver (its shell calls in here)."""

    def __init__(
        self,
        endpoint: Endpoint,
        router: Router,
        memory: PhysicalMemory,
        volumes: dict[str, FsVolume],
        *,
        cache: str,
        spawn: Spawn,
    ) -> None:
        self.endpoint = endpoint
        self.router = router
        self.memory = memory
        self.volumes = volumes
        self.cache = cache
        self.spawn = spawn
        self.fetches: dict[int, Fetch] = {}
        self.abandoned: OrderedDict[int, None] = OrderedDict()
        self.closing: dict[int, anyio.Event] = {}  # handle -> set when its close begins

    # ------------------------------------------------------------------ fetches
    def _new_tag(self) -> int:
        while True:
            tag = secrets.randbits(63)
            if tag and tag not in self.fetches and tag not in self.abandoned:
                return tag

    async def ensure_pages(
        self,
        cfile: CentralFile,
        pages: Sequence[int],
        window: Window | None,
        ahead: Iterable[Span] = (),
        known: list[FileExtent] | None = None,
        zeros: list[FileExtent] | None = None,
    ) -> None:
        """Bring ``pages`` into ``cfile.pages``: join fetches in flight, start the rest.

        Waiting ends early with EBADF when ``window`` starts closing. Pages
        dropped again while we waited (a shrink, a give-back) are fetched again.
        The ``ahead`` spans (read-ahead) are fetched too, started after ours so
        they queue behind them, and waited for by nobody here. ``known``: the
        file's extents as the open was told them (``opened.py``), for the first
        round's fetches only. ``zeros``: clusters a create reserved, never written
        (``FsOpened.reserved``): their pages are zero-filled by the cache, asked at
        once like ``known`` ones.
        """
        owner = window.proc.port if window else "vfs"
        spans = core.spans_of(pages)
        for _ in range(ENSURE_ATTEMPTS):
            waits = {t: self.fetches[t] for t, run in cfile.inflight.items()
                     if core.overlaps(run, spans)}
            for lo, hi in core.missing_spans(cfile, spans):
                fetch = self._start_fetch(cfile, lo, hi, owner, known, zeros)
                waits[fetch.tag] = fetch
            known = zeros = None
            if ahead:
                self.prefetch(cfile, core.missing_spans(cfile, ahead), owner)
                ahead = ()
            for fetch in waits.values():
                await self._wait(fetch.done, window)
                if fetch.error is not None:
                    raise OSError(fetch.error.errno, fetch.error.strerror)
            if all(cfile.pages.covers(lo, hi) for lo, hi in spans):
                return
        raise OSError(errno.EAGAIN, f"{cfile.info.name}: pages keep being dropped while read")

    def prefetch(self, cfile: CentralFile, spans: list[Span], owner: str) -> None:
        """Start fetches for ``spans`` (none cached nor in flight) and wait for none of them.

        Read-ahead: whoever later wants these pages joins the fetch as
        :meth:`ensure_pages` joins any fetch in flight (and gets its error).
        """
        for lo, hi in spans:
            self._start_fetch(cfile, lo, hi, owner)

    def _start_fetch(
        self, cfile: CentralFile, lo: int, hi: int, owner: str,
        known: list[FileExtent] | None = None,
        zeros: list[FileExtent] | None = None,
    ) -> Fetch:
        fetch = Fetch(self._new_tag(), cfile, range(lo, hi), owner=owner)
        self.fetches[fetch.tag] = fetch
        cfile.inflight[fetch.tag] = fetch.pages  # a run: consecutive pages
        if zeros:
            self._read_known(fetch, zeros, zero_fill=True)
        elif known:
            self._read_known(fetch, known)

        async def go() -> None:
            await self._run_fetch(fetch)

        self.spawn(go)
        return fetch

    def _read_known(
        self, fetch: Fetch, known: list[FileExtent], *, zero_fill: bool = False
    ) -> None:
        """Ask the cache for the fetch's pages at once where the open's extents name them.

        Sent before the caller awaits anything, so the extents are still the
        file's (``opened.py``); a full cache inbox leaves it to ``MapRange``.
        ``zero_fill``: they are a create's reserved clusters (past the size: the
        cache hands their pages out as clean zeros).
        """
        cfile = fetch.cfile
        volume = self.volumes[cfile.fs]
        size = cfile.info.size if not zero_fill else (fetch.pages[-1] + 1) * PAGE_SIZE
        extents = extents_for(known, fetch.pages[0], len(fetch.pages), size,
                              volume.logical_sector_size)
        if extents is None:
            return
        request = CacheRead(volume.device, [Extent(e.lba, e.count) for e in extents],
                            self.endpoint.name, fetch.tag, zero_fill)
        try:
            self.endpoint.send_nowait(self.cache, request)
        except (anyio.WouldBlock, OSError):  # a full inbox, a table without it: as before
            return
        fetch.extents = extents

    async def _run_fetch(self, fetch: Fetch) -> None:
        cfile = fetch.cfile
        start, length = fetch.pages[0] * PAGE_SIZE, len(fetch.pages) * PAGE_SIZE
        try:
            with fetch.scope:
                extents = fetch.extents
                if extents is None:
                    mapped: Mapped = await self.endpoint.call(
                        cfile.fs,
                        MapRange(cfile.fs_handle, start, length, self.endpoint.name, fetch.tag,
                                 self._unwritten_from(cfile)),
                        Mapped,
                    )
                    extents = mapped.extents
                if not extents:
                    raise OSError(
                        errno.EIO,
                        f"{cfile.info.name}: no clusters behind bytes {start}..{start + length}",
                    )
                if not fetch.arrived.is_set():  # a hit asked at the start may be here already
                    with anyio.fail_after(FETCH_TIMEOUT_S):
                        await self._traced_wait(fetch.arrived)
                if fetch.error is not None:
                    raise fetch.error
                assert fetch.ready is not None
                self._install(cfile, fetch.pages, extents, fetch.ready, fetch.owner)
                fetch.installed = True
        except OSError as exc:
            fetch.error = exc
        finally:
            self._end_fetch(fetch)

    @staticmethod
    def _unwritten_from(cfile: CentralFile) -> int:
        """First byte of the pages past the size on disk that nobody handed to the cache."""
        first = core.pages_of(cfile.info.size)
        if cfile.handed:
            first = max(first, max(cfile.handed) + 1)
        return first * PAGE_SIZE

    def _end_fetch(self, fetch: Fetch) -> None:
        fetch.cfile.inflight.pop(fetch.tag, None)
        self.fetches.pop(fetch.tag, None)
        if not fetch.installed and fetch.error is None:
            fetch.error = OSError(errno.EINTR, f"{fetch.cfile.info.name}: read abandoned")
        if fetch.ready is not None and not fetch.installed:  # pins we will not use
            self.endpoint.send_nowait(self.cache, _release_runs(fetch.ready))
        elif not fetch.arrived.is_set():  # the cache may still answer: return those pins
            self.abandoned[fetch.tag] = None
            while len(self.abandoned) > ABANDONED_MAX:
                self.abandoned.popitem(last=False)
        fetch.done.set()

    async def cancel_fetches(self, cfile: CentralFile, from_page: int = 0) -> None:
        """Stop the fetches of ``cfile`` that touch pages from ``from_page`` on; wait for them."""
        doomed = {t for t, run in cfile.inflight.items() if run.stop > from_page}
        for tag in doomed:
            fetch = self.fetches.get(tag)
            if fetch is not None:
                fetch.scope.cancel()
                await fetch.done.wait()

    async def _wait(self, event: anyio.Event, window: Window | None) -> None:
        """Wait for ``event``; for a handle, only until its close begins (then EBADF)."""
        closing = self.closing.get(window.handle) if window is not None else None
        if window is not None and (closing is None or closing.is_set()):
            raise BadHandle(f"handle {window.handle} is closing")
        if closing is None or event.is_set():
            await self._traced_wait(event)
            return
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await closing.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self._traced_wait(event)
            tg.cancel_scope.cancel()
        if not event.is_set():
            raise BadHandle(f"handle {window.handle if window else '?'} closed while it waited")

    async def _traced_wait(self, event: anyio.Event) -> None:
        """Wait for the cache (or a joined fetch); a "wait" span when tracing."""
        tracer = self.router.tracer
        if not tracer.enabled or event.is_set():
            await event.wait()
            return
        start = time.monotonic_ns()
        await event.wait()
        tracer.span(self.endpoint.name, "wait", 0, current_corr.get(), start, time.monotonic_ns())

    # ----------------------------------------------------------- cache notifications
    def sectors_ready(self, env: Envelope, msg: SectorsReady) -> None:
        """Pages for a fetch; from anyone but the cache, or for a tag never issued: no effect."""
        if env.src != self.cache:
            log.warning("SectorsReady refused: not from the cache", src=env.src, tag=msg.tag)
            return
        fetch = self.fetches.get(msg.tag)
        if fetch is not None and fetch.ready is None and not fetch.arrived.is_set():
            fetch.ready = msg
            fetch.arrived.set()
        elif msg.tag in self.abandoned:  # the requester gave up: return the pins
            del self.abandoned[msg.tag]
            self.endpoint.send_nowait(self.cache, _release_runs(msg))
        else:
            log.warning("SectorsReady ignored: unknown or answered tag", tag=msg.tag)

    def cache_failed(self, env: Envelope, msg: CacheFailed) -> None:
        if env.src != self.cache:
            log.warning("CacheFailed refused: not from the cache", src=env.src, tag=msg.tag)
            return
        fetch = self.fetches.get(msg.tag)
        if fetch is not None and not fetch.arrived.is_set():
            fetch.error = OSError(msg.errno, msg.message)
            fetch.arrived.set()
        else:
            self.abandoned.pop(msg.tag, None)

    # --------------------------------------------------------------- installing
    def _install(
        self,
        cfile: CentralFile,
        pages: range,
        extents: list[FileExtent],
        ready: SectorsReady,
        owner: str,
    ) -> None:
        """Turn the delivered cache page runs into file pages: mapped as is, or copied when not
        aligned. Works a run at a time: an aligned extent meets a delivered run in one
        interval of file pages, each of which *is* the cache page (one table entry per run)."""
        volume = self.volumes[cfile.fs]
        ss = volume.logical_sector_size
        spp = PAGE_SIZE // ss
        lo, hi = pages.start, pages.stop  # a fetch is one run of consecutive file pages
        used = [bytearray(run.count) for run in ready.runs]
        wanted = bytearray(b"\1") * (hi - lo)
        table = cfile.pages
        installed: list[Span] = []
        try:
            for first, end, lba0 in core.direct_spans(extents, ss, volume.alignment_offset):
                for i, run in enumerate(ready.runs):
                    # file page p <-> cache page lba0 + (p - first) * spp <-> run page k
                    a = max(first, lo, first + -(-(run.lba - lba0) // spp))
                    b = min(end, hi, first + (run.lba + run.count * spp - lba0) // spp)
                    if a >= b or (run.lba - lba0) % spp:
                        continue
                    k = (lba0 - run.lba) // spp + (a - first)
                    for x, y in _one_spans(wanted, a - lo, b - lo):  # usually all of it, at once
                        at = k + x - (a - lo)
                        table.put(lo + x, y - x, run.phys + at * PAGE_SIZE, run.lba + at * spp, spp)
                        installed.append((lo + x, lo + y))
                        used[i][at : at + y - x] = b"\1" * (y - x)
                        wanted[x:y] = bytes(y - x)
            rest = [lo + i for i, w in enumerate(wanted) if w] if wanted.find(1) >= 0 else []
            if rest:
                frames = {ref.lba: ref.phys for run in ready.runs for ref in run.refs(spp)}
                for page in rest:
                    table.put_private(page, self._copy_page(cfile, page, extents, frames, ss, owner))
                    installed.append((page, page + 1))
        except OSError:  # the owner's quota: undo; the fetch gives every pin back
            for a, b in installed:
                for x, y, phys, _, fl in table.remove(a, b):
                    if fl & PRIVATE:
                        self.memory.release(list(range(phys, phys + (y - x) * PAGE_SIZE, PAGE_SIZE)))
            raise
        self._zero_past_eof_span(cfile, max(lo, cfile.info.size // PAGE_SIZE), hi)
        extra = [
            PageSpan(run.lba + a * spp, b - a)
            for run, marks in zip(ready.runs, used, strict=True)
            for a, b in _zero_spans(marks)
        ]
        if extra:
            self.endpoint.send_nowait(self.cache, Release(ready.device, [], extra))

    def _copy_page(
        self,
        cfile: CentralFile,
        page: int,
        extents: list[FileExtent],
        frames: dict[int, int],
        ss: int,
        owner: str,
    ) -> FilePage:
        """The copy path: a private page-aligned frame filled from the cache pages (counted).

        The frame is charged to the process that asked (its quota bounds it).
        """
        (frame,) = self.memory.alloc(owner, 1)
        self.memory.zero([frame])
        sources = []
        lo, hi = page * PAGE_SIZE, min((page + 1) * PAGE_SIZE, cfile.fat_size)
        align = self.volumes[cfile.fs].alignment_offset
        for src_lba, src_off, dst_off, n in core.byte_sources(lo, hi, extents, ss, align):
            plba = core.page_lba(src_lba, ss, align)
            inpage = (src_lba - plba) * ss + src_off
            self.memory.copy(
                self.memory.view(frame + dst_off, n),
                self.memory.view(frames[plba] + inpage, n),
                reason="copy-path",
            )
            sources.append((plba, inpage, dst_off, n))
        return FilePage(frame, None, tuple(sources))

    async def extend_sources(self, cfile: CentralFile, old_limit: int) -> None:
        """Growth inside a private page: it learns where its new bytes go (copy path).

        A private page copied when the file's clusters ended inside it knows
        sources only up to that end; bytes stored beyond it after a growth
        would never be copied back. The file system names the new clusters
        (``MapRange``); the pages the cache delivers for it are given back
        unused (the page's new bytes are zeros or the writer's, never the disk's).
        """
        page, lo = old_limit // PAGE_SIZE, old_limit // PAGE_SIZE * PAGE_SIZE
        fp = cfile.pages.copies.get(page)
        hi = min(lo + PAGE_SIZE, cfile.fat_size)
        if fp is None or hi <= old_limit:
            return
        volume = self.volumes[cfile.fs]
        tag = self._new_tag()
        self.abandoned[tag] = None  # the delivered pins go straight back
        mapped: Mapped = await self.endpoint.call(
            cfile.fs,
            MapRange(cfile.fs_handle, old_limit, hi - old_limit, self.endpoint.name, tag),
            Mapped,
        )
        ss, align = volume.logical_sector_size, volume.alignment_offset
        added = []
        for src_lba, src_off, dst_off, n in core.byte_sources(
            old_limit, hi, mapped.extents, ss, align
        ):
            plba = core.page_lba(src_lba, ss, align)
            added.append((plba, (src_lba - plba) * ss + src_off, old_limit - lo + dst_off, n))
        if cfile.pages.copies.get(page) is fp:
            fp.sources = core.sources_below(fp.sources, old_limit - lo) + tuple(added)

    def zero_past_eof(self, cfile: CentralFile, page: int) -> None:
        """Zero what lies past the size on disk: a reservation's clusters hold stale bytes.

        The file system does not zero-fill a reservation (the data will cover
        it), so the cache delivers whatever the disk held there; nobody may see it.
        """
        tail = max(0, cfile.info.size - page * PAGE_SIZE)
        phys = cfile.pages.phys_of(page)
        if tail < PAGE_SIZE and phys >= 0 and page not in cfile.handed:
            self.memory.view(phys + tail, PAGE_SIZE - tail)[:] = bytes(PAGE_SIZE - tail)

    def _zero_past_eof_span(self, cfile: CentralFile, lo: int, hi: int) -> None:
        """``zero_past_eof`` for new pages ``lo .. hi-1``, one store per run of frames wholly
        past the size (a reservation being written is thousands of such pages)."""
        if lo >= hi:
            return
        whole_from = core.pages_of(cfile.info.size)
        if lo < whole_from:  # the page the size ends inside
            self.zero_past_eof(cfile, lo)
        for a, b, phys, _, _ in cfile.pages.pieces(max(lo, whole_from), hi):
            if not cfile.handed:
                self._zero_frames(phys, b - a)
                continue
            for page in range(a, b):
                if page not in cfile.handed:
                    self._zero_frames(phys + (page - a) * PAGE_SIZE, 1)

    def _zero_frames(self, phys: int, count: int) -> None:
        if count:
            self.memory.view(phys, count * PAGE_SIZE)[:] = bytes(count * PAGE_SIZE)

    # ------------------------------------------------------------------- parts
    def map_into(self, window: Window, pages: Sequence[int]) -> None:
        """Map the file pages into the window and publish them as FileMap parts (each at most
        ``MAX_PART_PAGES``: second chance ages and drops parts of that size at most)."""
        if not core.may_map(window):
            raise BadHandle(f"handle {window.handle} is {window.state.value}: nothing is mapped")
        step = core.MAX_PART_PAGES
        for lo, hi in core.unmapped_spans(window, core.spans_of(pages)):
            for at in range(lo, hi, step):
                self._map_part(window, at, min(at + step, hi))

    def _map_part(self, window: Window, lo: int, hi: int) -> None:
        """One part: one ``mmap(MAP_FIXED)`` per run of the file's page table in it."""
        pieces = window.file.pages.pieces(lo, hi)
        if sum(b - a for a, b, *_ in pieces) != hi - lo:
            raise OSError(errno.EAGAIN, f"{window.file.info.name}: pages {lo}..{hi} went away")
        self._back_dirty_map(window, lo, hi - lo)
        zero_copy = 0
        for a, b, phys, _, fl in pieces:
            window.space.map_run(DATA_OFFSET + a * PAGE_SIZE, b - a, phys, writable=window.writable)
            if not fl & PRIVATE:
                zero_copy += b - a
        self.router.counters.bytes_zero_copy += zero_copy * PAGE_SIZE
        core.record_mapping(window, lo, hi - lo, self._insert_part(window, lo, hi - lo))

    def _back_dirty_map(self, window: Window, first: int, count: int) -> None:
        """A writable window gets dirty-map frames for the pages it maps (zeroed, once)."""
        if not window.writable:
            return
        for m in core.dirty_map_pages_needed(window, first, count):
            (frame,) = self.memory.alloc("vfs", 1)
            self.memory.zero([frame])
            window.space.map(DIRTY_OFFSET + m * PAGE_SIZE, [frame], writable=True)
            window.dirty_frames[m] = frame

    def _insert_part(self, window: Window, first: int, count: int) -> int:
        if window.writer.free_count == 0:
            self.evict_parts(window, max(1, len(window.parts) // 8))
        try:
            index = window.writer.insert(first * PAGE_SIZE, count * PAGE_SIZE, first * PAGE_SIZE)
        except FileMapFull:
            self.evict_parts(window, len(window.parts) // 4 + 1)
            index = window.writer.insert(first * PAGE_SIZE, count * PAGE_SIZE, first * PAGE_SIZE)
        window.procpage.reset_part(index)
        window.ages[index] = AGE_INITIAL
        return index

    def evict_parts(self, window: Window, count: int) -> list[anyio.Event]:
        """Remove the least recently aged parts (FileMap full, or memory short)."""
        victims = sorted(window.parts, key=lambda i: window.ages.get(i, 0))[:count]
        return self.remove_parts(window, victims)

    def second_chance(self, window: Window) -> None:
        result = scan(window.procpage, list(window.parts), window.ages)
        window.ages = dict(result.ages)
        self.remove_parts(window, [v.index for v in result.victims if v.index in window.parts])

    def remove_parts(self, window: Window, indexes: Iterable[int]) -> list[anyio.Event]:
        """Unlink parts (lock-free order) and collect their dirt; one event per unmap to come."""
        events = []
        for index in list(indexes):
            if index not in window.parts:
                continue
            first, n = window.parts[index]
            core.mark_dirty(window.file, core.take_dirty(window, self.memory, first, n))
            window.writer.remove(index)
            _, _, serials = core.forget_part(window, index)
            done = anyio.Event()
            self._retire_part(window, index, first, n, serials, done)
            events.append(done)
        return events

    def _retire_part(
        self,
        window: Window,
        index: int,
        first: int,
        n: int,
        serials: list[tuple[int, int, int]],
        done: anyio.Event,
    ) -> None:
        """Clear the entry after one grace period and unmap after another (unless closed)."""

        async def retire() -> None:
            try:
                await anyio.sleep(GRACE_S)
                if core.may_map(window):
                    # Stores made through a lookup that began before the removal land in the
                    # grace period: take their dirt again before the index can be reused.
                    core.mark_dirty(window.file, core.take_dirty(window, self.memory, first, n))
                    window.writer.clear_part(index)
                await anyio.sleep(GRACE_S)
                if core.may_map(window):
                    for lo, hi in core.stale_spans(window, serials):
                        window.space.unmap(DATA_OFFSET + lo * PAGE_SIZE, hi - lo, discard=True)
            finally:
                done.set()

        self.spawn(retire)


def _release_runs(ready: SectorsReady) -> Release:
    """Give back every pin of a delivery, a run at a time."""
    return Release(ready.device, [], [PageSpan(run.lba, run.count) for run in ready.runs])


def _one_spans(marks: bytearray, lo: int, hi: int) -> list[tuple[int, int]]:
    """``[a, b)`` index ranges inside ``[lo, hi)`` where ``marks`` is 1 (pages still wanted)."""
    out: list[tuple[int, int]] = []
    start = marks.find(1, lo, hi)
    while start >= 0:
        end = marks.find(0, start, hi)
        end = hi if end < 0 else end
        out.append((start, end))
        start = marks.find(1, end, hi)
    return out


def _zero_spans(marks: bytearray) -> list[tuple[int, int]]:
    """``[a, b)`` index ranges where ``marks`` is 0 (pages of a run nobody used)."""
    out: list[tuple[int, int]] = []
    start = marks.find(0)
    while start >= 0:
        end = marks.find(1, start)
        end = len(marks) if end < 0 else end
        out.append((start, end))
        start = marks.find(0, end)
    return out

