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
from collections.abc import Callable, Coroutine, Iterable
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
from servers.vfs.core import BadHandle, CentralFile, FilePage, Window
from servers.vfs.filemap import FileMapFull
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
    pages: list[int]
    arrived: anyio.Event = field(default_factory=anyio.Event)  # SectorsReady or CacheFailed
    done: anyio.Event = field(default_factory=anyio.Event)  # pages installed (or failed)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ready: SectorsReady | None = None
    error: OSError | None = None
    installed: bool = False
    owner: str = "vfs"  # who pays for the copy path's private frames (the asking process)
    zeros: list[FileExtent] | None = None  # unwritten clusters, known: no MapRange (a create)


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
        pages: list[int],
        window: Window | None,
        ahead: Iterable[int] = (),
        zeros: list[FileExtent] | None = None,
    ) -> None:
        """Bring ``pages`` into ``cfile.pages``: join fetches in flight, start the rest.

        Waiting ends early with EBADF when ``window`` starts closing. Pages
        dropped again while we waited (a shrink, a give-back) are fetched again.
        The ``ahead`` pages (read-ahead) are fetched too, started after ours so
        they queue behind them, and waited for by nobody here. ``zeros``: the
        clusters behind ``pages`` (one run), reserved and never written, whose
        zero pages the cache hands out without asking the file system.
        """
        owner = window.proc.port if window else "vfs"
        for _ in range(ENSURE_ATTEMPTS):
            waits = {t: self.fetches[t] for t, run in cfile.inflight.items()
                     if pages and core.overlaps(run, pages)}
            for run in core.runs(core.missing_pages(cfile, pages)):
                fetch = self._start_fetch(cfile, run, owner, zeros if run == pages else None)
                waits[fetch.tag] = fetch
            if ahead:
                self.prefetch(cfile, core.missing_pages(cfile, ahead), owner)
                ahead = ()
            for fetch in waits.values():
                await self._wait(fetch.done, window)
                if fetch.error is not None:
                    raise OSError(fetch.error.errno, fetch.error.strerror)
            if all(map(cfile.pages.__contains__, pages)):
                return
        raise OSError(errno.EAGAIN, f"{cfile.info.name}: pages keep being dropped while read")

    def prefetch(self, cfile: CentralFile, pages: list[int], owner: str) -> None:
        """Start fetches for ``pages`` (none cached nor in flight) and wait for none of them.

        Read-ahead: whoever later wants these pages joins the fetch as
        :meth:`ensure_pages` joins any fetch in flight (and gets its error).
        """
        for run in core.runs(pages):
            self._start_fetch(cfile, run, owner)

    def _start_fetch(
        self, cfile: CentralFile, run: list[int], owner: str,
        zeros: list[FileExtent] | None = None,
    ) -> Fetch:
        fetch = Fetch(self._new_tag(), cfile, run, owner=owner, zeros=zeros)
        self.fetches[fetch.tag] = fetch
        cfile.inflight[fetch.tag] = range(run[0], run[-1] + 1)  # a run: consecutive pages

        async def go() -> None:
            await self._run_fetch(fetch)

        self.spawn(go)
        return fetch

    async def _run_fetch(self, fetch: Fetch) -> None:
        cfile = fetch.cfile
        start, length = fetch.pages[0] * PAGE_SIZE, len(fetch.pages) * PAGE_SIZE
        try:
            with fetch.scope:
                if fetch.zeros is not None:  # a reservation's clusters: straight to the cache
                    device, me = self.volumes[cfile.fs].device, self.endpoint.name
                    found = [Extent(e.lba, e.count) for e in fetch.zeros]
                    await self.endpoint.send(self.cache, CacheRead(device, found, me, fetch.tag, True))
                    mapped = Mapped(fetch.tag, cfile.info.size, fetch.zeros)
                else:
                    mapped = await self.endpoint.call(
                        cfile.fs,
                        MapRange(cfile.fs_handle, start, length, self.endpoint.name, fetch.tag,
                                 self._unwritten_from(cfile)),
                        Mapped,
                    )
                if not mapped.extents:
                    raise OSError(
                        errno.EIO,
                        f"{cfile.info.name}: no clusters behind bytes {start}..{start + length}",
                    )
                with anyio.fail_after(FETCH_TIMEOUT_S):
                    await self._traced_wait(fetch.arrived)
                if fetch.error is not None:
                    raise fetch.error
                assert fetch.ready is not None
                self._install(cfile, fetch.pages, mapped.extents, fetch.ready, fetch.owner)
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
        pages: list[int],
        extents: list[FileExtent],
        ready: SectorsReady,
        owner: str,
    ) -> None:
        """Turn the delivered cache page runs into file pages: mapped as is, or copied when not
        aligned. Works a run at a time: an aligned extent meets a delivered run in one
        interval of file pages, each of which *is* the cache page (no lookup per page)."""
        volume = self.volumes[cfile.fs]
        ss = volume.logical_sector_size
        spp = PAGE_SIZE // ss
        lo, hi = pages[0], pages[-1] + 1  # a fetch is one run of consecutive file pages
        used = [bytearray(run.count) for run in ready.runs]
        wanted = bytearray(b"\1") * (hi - lo)
        installed: list[int] = []
        try:
            for first, end, lba0 in core.direct_spans(extents, ss, volume.alignment_offset):
                for i, run in enumerate(ready.runs):
                    # file page p <-> cache page lba0 + (p - first) * spp <-> run page k
                    a = max(first, lo, first + -(-(run.lba - lba0) // spp))
                    b = min(end, hi, first + (run.lba + run.count * spp - lba0) // spp)
                    if a >= b or (run.lba - lba0) % spp:
                        continue
                    k = (lba0 - run.lba) // spp + (a - first)
                    n = b - a
                    if wanted.find(0, a - lo, b - lo) < 0:  # the usual case: all of it, at once
                        phys, lba = run.phys + k * PAGE_SIZE, run.lba + k * spp
                        cfile.pages.update(zip(range(a, b), map(
                            FilePage,
                            range(phys, phys + n * PAGE_SIZE, PAGE_SIZE),
                            range(lba, lba + n * spp, spp),
                        ), strict=True))
                        installed.extend(range(a, b))
                        used[i][k : k + n] = b"\1" * n
                        wanted[a - lo : b - lo] = bytes(n)
                        continue
                    for j in range(n):
                        page = a + j
                        if wanted[page - lo]:
                            cfile.pages[page] = FilePage(
                                run.phys + (k + j) * PAGE_SIZE, run.lba + (k + j) * spp
                            )
                            installed.append(page)
                            used[i][k + j] = 1
                            wanted[page - lo] = 0
            rest = [lo + i for i, w in enumerate(wanted) if w]
            if rest:
                frames = {ref.lba: ref.phys for run in ready.runs for ref in run.refs(spp)}
                for page in rest:
                    cfile.pages[page] = self._copy_page(cfile, page, extents, frames, ss, owner)
                    installed.append(page)
        except OSError:  # the owner's quota: undo; the fetch gives every pin back
            for page in installed:
                fp = cfile.pages.pop(page)
                if fp.cache_lba is None:
                    self.memory.release([fp.phys])
            raise
        self._zero_past_eof_runs(cfile, pages[max(0, cfile.info.size // PAGE_SIZE - pages[0]):])
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
        fp = cfile.pages.get(page)
        hi = min(lo + PAGE_SIZE, cfile.fat_size)
        if fp is None or fp.cache_lba is not None or hi <= old_limit:
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
        if cfile.pages.get(page) is fp:
            fp.sources = core.sources_below(fp.sources, old_limit - lo) + tuple(added)

    def zero_past_eof(self, cfile: CentralFile, page: int) -> None:
        """Zero what lies past the size on disk: a reservation's clusters hold stale bytes.

        The file system does not zero-fill a reservation (the data will cover
        it), so the cache delivers whatever the disk held there; nobody may see it.
        """
        tail = max(0, cfile.info.size - page * PAGE_SIZE)
        fp = cfile.pages.get(page)
        if tail < PAGE_SIZE and fp is not None and page not in cfile.handed:
            self.memory.view(fp.phys + tail, PAGE_SIZE - tail)[:] = bytes(PAGE_SIZE - tail)

    def _zero_past_eof_runs(self, cfile: CentralFile, pages: list[int]) -> None:
        """``zero_past_eof`` for new pages, one store per run of pages wholly past the size
        in consecutive frames (a reservation being written is thousands of such pages)."""
        whole_from = -(-cfile.info.size // PAGE_SIZE)
        run_phys, run_len = 0, 0
        for page in pages:
            fp = cfile.pages.get(page)
            if page < whole_from or fp is None or page in cfile.handed:
                self.zero_past_eof(cfile, page)
                continue
            if run_len and fp.phys == run_phys + run_len * PAGE_SIZE:
                run_len += 1
                continue
            self._zero_frames(run_phys, run_len)
            run_phys, run_len = fp.phys, 1
        self._zero_frames(run_phys, run_len)

    def _zero_frames(self, phys: int, count: int) -> None:
        if count:
            self.memory.view(phys, count * PAGE_SIZE)[:] = bytes(count * PAGE_SIZE)

    # ------------------------------------------------------------------- parts
    def map_into(self, window: Window, pages: list[int]) -> None:
        """Map the file pages into the window and publish them as FileMap parts (each at most
        ``MAX_PART_PAGES``: second chance ages and drops parts of that size at most)."""
        if not core.may_map(window):
            raise BadHandle(f"handle {window.handle} is {window.state.value}: nothing is mapped")
        step = core.MAX_PART_PAGES
        for whole in core.unmapped_runs(window, pages):
            for at in range(0, len(whole), step):
                self._map_part(window, whole[at : at + step])

    def _map_part(self, window: Window, run: list[int]) -> None:
        self._back_dirty_map(window, run)
        file_pages = list(map(window.file.pages.__getitem__, run))
        frames = [fp.phys for fp in file_pages]
        window.space.map(DATA_OFFSET + run[0] * PAGE_SIZE, frames, writable=window.writable)
        zero_copy = len(run) - [fp.cache_lba for fp in file_pages].count(None)
        self.router.counters.bytes_zero_copy += zero_copy * PAGE_SIZE
        core.record_mapping(window, run, self._insert_part(window, run))

    def _back_dirty_map(self, window: Window, run: list[int]) -> None:
        """A writable window gets dirty-map frames for the pages it maps (zeroed, once)."""
        if not window.writable:
            return
        for m in core.dirty_map_pages_needed(window, run):
            (frame,) = self.memory.alloc("vfs", 1)
            self.memory.zero([frame])
            window.space.map(DIRTY_OFFSET + m * PAGE_SIZE, [frame], writable=True)
            window.dirty_frames[m] = frame

    def _insert_part(self, window: Window, run: list[int]) -> int:
        if window.writer.free_count == 0:
            self.evict_parts(window, max(1, len(window.parts) // 8))
        try:
            index = window.writer.insert(
                run[0] * PAGE_SIZE, len(run) * PAGE_SIZE, run[0] * PAGE_SIZE
            )
        except FileMapFull:
            self.evict_parts(window, len(window.parts) // 4 + 1)
            index = window.writer.insert(
                run[0] * PAGE_SIZE, len(run) * PAGE_SIZE, run[0] * PAGE_SIZE
            )
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
            _, _, generations = core.forget_part(window, index)
            done = anyio.Event()
            self._retire_part(window, index, first, n, generations, done)
            events.append(done)
        return events

    def _retire_part(
        self,
        window: Window,
        index: int,
        first: int,
        n: int,
        generations: dict[int, int],
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
                    for run in core.runs(core.stale_pages(window, generations)):
                        window.space.unmap(DATA_OFFSET + run[0] * PAGE_SIZE, len(run), discard=True)
            finally:
                done.set()

        self.spawn(retire)


def _release_runs(ready: SectorsReady) -> Release:
    """Give back every pin of a delivery, a run at a time."""
    return Release(ready.device, [], [PageSpan(run.lba, run.count) for run in ready.runs])


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

