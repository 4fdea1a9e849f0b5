"""The kernel file driver (VFS): the server shell around ``core.py``.

One central file per file (found by the file system's file id), shared by
every process that has it open, holds the file's cached pages. Each open
handle is a window in the process's address space laid out as ``abi.py``
says (FileMap, state page, per-process page, dirty map, data). The shell
receives messages, asks the core what to do, and sends what it says; the read
path lives in ``paging.py``, the write path in ``writeback.py``. The whole
design, with a traced request, is in ``docs/architecture.md``.
"""

from __future__ import annotations

import errno
import itertools
import weakref
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from microkernel.addrspace import make_address_space
from microkernel.ipc import Envelope, Router
from microkernel.memory import PhysicalMemory
from microkernel.process import Process, ProcessTable
from microkernel.protocol import Ok
from microkernel.server import Server, handles
from servers.cache.protocol import (
    CacheFailed,
    GiveBack,
    GiveBackDone,
    PageSpan,
    Release,
    SectorsReady,
)
from servers.fs.protocol import (
    FileExtent,
    FsClose,
    FsFsync,
    FsInfo,
    FsOpen,
    FsOpenAt,
    FsOpened,
    FsStatFs,
    FsStatHandle,
    FsVolume,
)
from servers.vfs import core
from servers.vfs.abi import FILEMAP_OFFSET, PAGE_SIZE, PROCPAGE_OFFSET, STATE_OFFSET, WINDOW_SIZE
from servers.vfs.core import BadHandle, CentralFile, RetainedFile, RetainedFiles, Window
from servers.vfs.filemap_writer import FileMapWriter
from servers.vfs.legacy import LegacyMixin
from servers.vfs.mounts import MountTable
from servers.vfs.namespace import NamespaceMixin
from servers.vfs.pages import FileStatePage, ProcessFilePage
from servers.vfs.paging import PARTS_BEFORE_SCAN, Pager
from servers.vfs.protocol import (
    CachePart,
    Close,
    Exit,
    Flush,
    Fsync,
    Open,
    OpenAt,
    Opened,
    OpenFlags,
    PartReady,
    SetSize,
    SetTimes,
    SizeSet,
    StatHandle,
    Syscall,
)
from servers.vfs.writeback import Flusher

__all__ = ["MountTable", "VfsServer"]

MIN_PART_PAGES = 16
OPEN_RESERVE = 16 * 1024  # a create's first reservation: a small file's first write
OPEN_MAPPED = OPEN_RESERVE  # all of it mapped by the open (zero frames, no MapRange)



def open_reserve(flags: OpenFlags) -> int:
    """Bytes a create for writing asks the file system to reserve at once (0: none).

    The first write of a small new file then needs no reservation of its own
    (and its pages are mapped): a small file is open, write, close. A few
    pages only, so a file never written or a small one gives next to nothing
    back at close (it was 256 KiB: 64 clusters allocated, then freed); a bigger
    first write reserves for itself, and the file library grows its
    reservations geometrically from there.
    """
    return OPEN_RESERVE if flags & OpenFlags.CREATE and flags & OpenFlags.WRITE else 0


class VfsServer(NamespaceMixin, LegacyMixin, Server):
    """The kernel file driver."""

    protocol = Syscall | SectorsReady | CacheFailed | GiveBack
    concurrent = True
    inbox_capacity = 1024

    def __init__(
        self,
        name: str,
        router: Router,
        memory: PhysicalMemory,
        processes: ProcessTable,
        *,
        filesystems: list[str],
        mounts: dict[str, str] | None = None,
        cache: str = "cache",
        scan_interval: float = 1.0,
    ) -> None:
        super().__init__(name, router)
        if not filesystems:
            raise ValueError("the kernel file driver needs at least one file system")
        self.memory = memory
        self.processes = processes
        self.mounts = MountTable(mounts or {"/": filesystems[0]})
        # The volume at / first: its root is node 1 (see namespace.py).
        self.filesystems = sorted(filesystems, key=lambda fs: fs != self.mounts.root)
        self.cache = cache
        self.scan_interval = scan_interval
        self.volumes: dict[str, FsVolume] = {}
        self.files: dict[tuple[str, int], CentralFile] = {}
        self.windows: dict[int, Window] = {}
        # Closed files' pages, still pinned (docs/architecture.md §6): at most an eighth of RAM.
        self.retained = RetainedFiles(max_pages=min(core.RETAIN_PAGES, memory.frames_total // 8))
        self._handles = itertools.count(1)
        self._open_lock = anyio.Lock(fast_acquire=True)  # uncontended: no event-loop turn
        self._exited: weakref.WeakSet[Process] = weakref.WeakSet()  # sent Exit
        self._retiring: dict[tuple[str, int], anyio.Event] = {}
        self._dropping: dict[tuple[str, int], list[anyio.Event]] = {}  # releases behind readers
        self._idle: dict[int, anyio.Event] = {}  # handle -> set when its last operation ends
        self._closed: dict[int, anyio.Event] = {}  # handle -> set when its close is done
        self._task_group: anyio.abc.TaskGroup | None = None
        self.pager = Pager(
            self.endpoint, router, memory, self.volumes, cache=cache, spawn=self._spawn
        )
        self.flusher = Flusher(self.endpoint, memory, self.volumes, cache=cache, pager=self.pager)

    # ------------------------------------------------------------------ lifecycle
    async def setup(self) -> None:
        for fs in self.filesystems:
            self.volumes[fs] = await self.endpoint.call(fs, FsStatFs(), FsVolume)

    async def teardown(self) -> None:
        for window in list(self.windows.values()):
            await self._close(window)
        while self._retiring:  # a close joined above may still be retiring its file
            await next(iter(self._retiring.values())).wait()
        self._release_retained(self.retained.clear())
        for fs in self.filesystems:  # a barrier: the FsCloses posted before it are done
            try:
                await self.endpoint.call(fs, FsStatFs(), FsVolume)
            except OSError as exc:  # a file system that is gone has nothing left to close
                self.log.warning("no barrier before unmount", fs=fs, error=str(exc))

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            await super().serve(task_status=task_status)
            tg.cancel_scope.cancel()

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        assert self._task_group is not None, "the kernel file driver is not serving"
        self._task_group.start_soon(fn)

    async def background(self) -> None:
        """Once per ``scan_interval``: second chance ages parts, and dirty pages go to the cache.

        The writeback makes bytes stored through a mapping reach the disk while
        the file stays open (the cache writes them within its own interval).
        """
        while True:
            await anyio.sleep(self.scan_interval)
            for window in list(self.windows.values()):
                if core.may_map(window):
                    self.pager.second_chance(window)
            for key, cfile in list(self.files.items()):
                if self.files.get(key) is cfile:
                    try:
                        await self.flusher.write_back(cfile)
                    except OSError as exc:  # the pages stay dirty: the writer's fsync or close
                        self.log.warning("periodic writeback failed", file=cfile.info.name,
                                         error=str(exc))

    # -------------------------------------------------------------------- handles
    def _window(self, env: Envelope, handle: int) -> Window:
        window = self.windows.get(handle)
        if window is None or window.proc.port != env.src or not core.may_map(window):
            raise BadHandle(f"handle {handle} is not open in {env.src}")
        return window

    def _writable_window(self, env: Envelope, handle: int) -> Window:
        window = self._window(env, handle)
        if not window.writable:
            raise OSError(9, f"handle {handle} is not open for writing")  # EBADF
        return window

    @contextmanager
    def _op(self, window: Window) -> Iterator[Window]:
        """One operation in flight on the handle: a close waits for it (or wakes it)."""
        core.begin_op(window)
        try:
            yield window
        finally:
            if core.end_op(window):
                self._idle[window.handle].set()

    # ------------------------------------------------------------------ open/close
    @handles(Open)
    async def on_open(self, env: Envelope, msg: Open) -> Opened:
        fs, path = self.mounts.route(msg.path)
        flags = OpenFlags(msg.flags)
        create, excl = bool(flags & OpenFlags.CREATE), bool(flags & OpenFlags.EXCLUSIVE)
        request = FsOpen(path, create, excl, False, open_reserve(flags))
        return await self._open(env, fs, request, flags, msg.path)

    @handles(OpenAt)
    async def on_open_at(self, env: Envelope, msg: OpenAt) -> Opened:
        fs, directory = self.split_node(msg.directory)
        flags = OpenFlags(msg.flags)
        create, excl = bool(flags & OpenFlags.CREATE), bool(flags & OpenFlags.EXCLUSIVE)
        request = FsOpenAt(directory, msg.name, create, excl, open_reserve(flags))
        return await self._open(env, fs, request, flags, msg.name)

    async def _open(
        self, env: Envelope, fs: str, request: FsOpen | FsOpenAt, flags: OpenFlags, label: str
    ) -> Opened:
        proc = self.processes.by_port.get(env.src)
        if proc is None:
            raise BadHandle(f"{env.src} is not a process")
        if flags & OpenFlags.WRITE and self.volumes[fs].read_only:
            raise OSError(30, f"{label}: read-only file system")
        async with self._open_lock:
            cfile, surplus, known, zeros = await self._central(fs, request)
            window = self._new_window(proc, cfile, flags)
        # created by this open, empty, its reservation made with it: the writer's
        reserved = 0 if surplus or not request.reserve or cfile.size else cfile.reserved
        try:  # the window holds the central file now: awaiting cannot retire it
            with self._op(window):
                if surplus:
                    await self.endpoint.call(fs, FsClose(surplus), Ok)
                if reserved:  # nothing to truncate; the first write's first pages mapped
                    await self._map_for_write(window, 0, OPEN_MAPPED, zeros)
                elif flags & OpenFlags.TRUNCATE and (cfile.size or cfile.fat_size):
                    await self.flusher.set_size(cfile, 0)
                elif flags & OpenFlags.READ:
                    await self._map_up_front(window, known)
            if not proc.alive or proc in self._exited:  # it exited while we opened
                raise BadHandle(f"{label}: process {env.src} exited during its open")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close(window)
            raise
        return Opened(window.handle, 0, cfile.size, self.volumes[fs].aligned, reserved)

    async def _central(
        self, fs: str, request: FsOpen | FsOpenAt
    ) -> tuple[CentralFile, int, list[FileExtent], list[FileExtent]]:
        """The central file of what the request names, found by the file system's identity.

        Every open asks the file system (which resolves aliases, case and renamed
        parents to one entry and says which file that is); a second handle onto a
        file already open is given back. Returns the central file, the file
        system handle to give back (0: none) and, for a central file made from
        this very answer, the small file's extents it carried (``opened.py``) and
        the clusters of a reservation the open made (``FsOpened.reserved``).
        """
        opened: FsOpened = await self.endpoint.call(fs, request, FsOpened)
        key = (fs, opened.info.file_id)
        retiring = self._retiring.get(key)
        if retiring is not None:  # the last close is writing back: its size is not final yet
            await retiring.wait()
            info: FsInfo = await self.endpoint.call(fs, FsStatHandle(opened.handle), FsInfo)
            opened = FsOpened(opened.handle, info)  # the extents may be stale: none
        cfile = self.files.get(key)
        if cfile is not None:
            return cfile, opened.handle, [], []
        (frame,) = self.memory.alloc("vfs", 1)
        self.memory.zero([frame])
        state = FileStatePage(self.memory.view(frame), writable=True)
        cfile = CentralFile(key, opened.handle, opened.info, frame, state)
        if request.reserve and opened.info.alloc_size > opened.info.size == 0:
            cfile.reserved = opened.info.alloc_size  # the file system reserved at the create
        record = self.retained.take(key)
        if record is not None and record.matches(opened.info):
            cfile.pages = record.pages  # the pins pass to the central file
        elif record is not None:
            self._release_retained([record])
        cfile.publish()
        self.files[key] = cfile
        return cfile, 0, opened.extents, opened.reserved if cfile.reserved else []

    async def _map_up_front(self, window: Window, known: list[FileExtent]) -> None:
        """Map what the first reads will want before the open replies: no miss for them.

        The pages the file already has (kept from its last close, or another
        opener's), each contiguous run as one part, and a small file whole
        (fetched here, so its open, read and close cost no ``CachePart``; with
        the extents the open was told, ``known``, not even a ``MapRange``). An
        error here is the first read's to report, not the open's.
        """
        cfile = window.file
        pages = core.up_front_pages(cfile)
        if not pages:
            return
        try:
            if len(pages) <= core.SMALL_FILE_PAGES and any(p not in cfile.pages for p in pages):
                await self.pager.ensure_pages(cfile, pages, window, known=known)
            self.pager.map_into(window, pages)
        except OSError as exc:
            self.log.debug("nothing mapped at open", file=cfile.info.name, error=str(exc))

    def _new_window(self, proc: Process, cfile: CentralFile, flags: OpenFlags) -> Window:
        fm_frame, pp_frame = self.memory.alloc("vfs", 2)
        self.memory.zero([fm_frame, pp_frame])
        space = make_address_space(self.memory, WINDOW_SIZE)
        space.map(FILEMAP_OFFSET, [fm_frame], writable=False)
        space.map(STATE_OFFSET, [cfile.state_frame], writable=False)
        space.map(PROCPAGE_OFFSET, [pp_frame], writable=True)
        handle = next(self._handles)
        window = Window(
            handle,
            proc,
            cfile,
            space,
            int(flags),
            fm_frame,
            pp_frame,
            FileMapWriter(self.memory.view(fm_frame)),
            ProcessFilePage(self.memory.view(pp_frame)),
        )
        if flags & OpenFlags.APPEND:
            window.procpage.set_position(0, cfile.size)
        proc.windows[handle] = space
        cfile.windows.add(window)
        self.windows[handle] = window
        self.pager.closing[handle] = anyio.Event()
        self._idle[handle] = anyio.Event()
        self._closed[handle] = anyio.Event()
        core.opened(window)
        return window

    @handles(Close)
    async def on_close(self, env: Envelope, msg: Close) -> None:
        await self._close(self._window(env, msg.handle))

    @handles(Exit)
    async def on_exit(self, env: Envelope, msg: Exit) -> None:
        proc = self.processes.by_port.get(env.src)
        if proc is not None:  # an Open still under way must not leave it a window
            self._exited.add(proc)
        for window in [w for w in self.windows.values() if w.proc.port == env.src]:
            await self._close(window)

    async def _close(self, window: Window) -> None:
        """CLOSING: wake and wait out the handle's operations; then unmap, release, CLOSED."""
        handle = window.handle
        if not core.begin_close(window):  # another close is under way (or done): join it
            closed = self._closed.get(handle)
            if closed is not None:
                await closed.wait()
            return
        self.pager.closing.pop(handle).set()
        if window.ops:
            await self._idle[handle].wait()
        cfile = window.file
        core.mark_dirty(cfile, core.collect_window(window, self.memory))
        for index in list(window.parts):
            window.writer.remove(index)
        window.space.close()
        window.proc.windows.pop(handle, None)
        self.memory.release(core.finish_close(window))
        del self.windows[handle]
        del self._idle[handle]
        self._closed.pop(handle).set()
        if cfile.windows:
            self._hand_over(cfile, window.proc)
        else:
            await self._retire(cfile)

    def _hand_over(self, cfile: CentralFile, leaving: Process) -> None:
        """Private pages the closer paid for stay in the file: a remaining opener pays now.

        The closer's quota must not keep paying for them, and its frames are
        freed when it exits. An opener whose quota is full passes; when none can,
        the kernel file driver holds them until the last close.
        """
        paid = set(self.memory.frames_of(leaving.port))
        frames = [fp.phys for fp in cfile.pages.copies.values() if fp.phys in paid]
        if not frames:
            return
        for other in {w.proc.port for w in cfile.windows} - {leaving.port}:
            try:
                self.memory.charge(other, frames)
                return
            except OSError:
                continue
        self.memory.charge("vfs", frames)

    async def _retire(self, cfile: CentralFile) -> None:
        """Last close: stop fetches, write back, give the pages back, close in the file system.

        The file leaves the table first and an open of the same file waits for
        the retirement, so no new window can join a central file being torn down.
        """
        if self.files.get(cfile.key) is cfile:
            del self.files[cfile.key]
        done = self._retiring[cfile.key] = anyio.Event()
        try:
            await self.pager.cancel_fetches(cfile)
            request = FsClose(cfile.fs_handle)
            try:
                kept = False
                await self.flusher.write_back(cfile, then_drop=self._retain, publish=False)
                request = await self.flusher.close_request(cfile)
                await self.flusher.stamp_mtime(cfile)
                kept = self.retained.refresh(cfile.key, cfile.info)
            finally:  # a write error is the closer's to see; nothing stays held for it
                if not kept and (record := self.retained.take(cfile.key)) is not None:
                    self._release_retained([record])
                self.flusher.drop_pages(cfile, core.every_span(cfile))
                self.flusher.forget(cfile)
                self.memory.release([cfile.state_frame])
                with anyio.CancelScope(shield=True):
                    await self._fs_close(cfile, request)
        finally:
            if self._retiring.get(cfile.key) is done:
                del self._retiring[cfile.key]
            done.set()

    async def _fs_close(self, cfile: CentralFile, request: FsClose) -> None:
        """``FsClose``; posted for a file nobody changed, whose close has nothing to fail.

        The file system handles its messages in order, so a later open of the
        same file finds the handle closed, and ``teardown``'s last call to it
        comes after every posted one (the handle's close may still free what
        another handle reserved before the volume is unmounted). A file that
        was written, holds a reservation or whose name was unlinked waits for
        the answer: freeing clusters can fail, and that error is the closer's.
        """
        if request.size >= 0 or cfile.modified or cfile.reserved or not cfile.retain:
            await self.endpoint.call(cfile.fs, request, Ok)
        else:
            await self.endpoint.send(cfile.fs, request)

    def _retain(self, cfile: CentralFile) -> list[core.Span]:
        """Keep the clean cache pages of a file at its last close; returns the pages to drop.

        Called once the dirty pages are in the cache, before the size is
        published: the record goes into the LRU at once, so a GiveBack the
        publish causes (the file system needs frames) can take its pins back.
        The tail of the last page past the size is zeroed (as a fetch would): a
        new open maps exactly what a cold read would show. The kept runs move
        to the record as they are (no work per page).
        """
        cluster = self.volumes[cfile.fs].cluster_size
        keep = core.take_retained(cfile, cluster) if cfile.retain else None
        if keep:
            last = (cfile.size - 1) // PAGE_SIZE
            tail = cfile.size - last * PAGE_SIZE
            phys = keep.phys_of(last)
            if phys >= 0 and tail < PAGE_SIZE:
                self.memory.view(phys + tail, PAGE_SIZE - tail)[:] = bytes(PAGE_SIZE - tail)
            info = cfile.info
            record = RetainedFile(cfile.key, info.name, cfile.size, info.native, keep)
            self._release_retained(self.retained.put(record))
        return core.every_span(cfile)

    def _release_retained(self, records: list[RetainedFile]) -> int:
        """Give the pins of retained records back to the cache, a run at a time; returns how many."""
        by_device: dict[str, list[PageSpan]] = {}
        released = 0
        for record in records:
            spans = by_device.setdefault(self.volumes[record.key[0]].device, [])
            pins, _ = core.drop_spans_of(record.pages)
            spans.extend(pins)
            released += sum(span.count for span in pins)
        for device, spans in by_device.items():
            if spans:
                self.endpoint.send_nowait(self.cache, Release(device, [], spans))
        return released

    def _forget_name(self, fs: str, name: str) -> None:
        """An unlink or a rename onto ``name``: its file's pages are kept no longer.

        By name, without asking the file system: what it drops may be more than
        needed, never less than an exact match; a file still open is marked not
        to be kept at its last close (its clusters are freed then).
        """
        base = name.rstrip("/").rsplit("/", 1)[-1].casefold()
        self._release_retained(self.retained.named(fs, base))
        for cfile in self.files.values():
            if cfile.fs == fs and cfile.info.name.casefold() == base:
                cfile.retain = False

    # ------------------------------------------------------------------ CachePart
    @handles(CachePart)
    async def on_cache_part(self, env: Envelope, msg: CachePart) -> PartReady:
        window = self._window(env, msg.handle)
        pages = self._call_pages(core.part_pages(window, msg.position, msg.size))
        if not pages:
            return PartReady(msg.position, 0)
        with self._op(window):
            if window.writer.count > PARTS_BEFORE_SCAN:
                self.pager.second_chance(window)  # the scan also runs on a miss
            ahead = self._read_ahead(window, pages, msg.position + msg.size)
            await self._room_for(window.file, pages)
            pages = await self._bring_in(window, pages, ahead)
            self.pager.map_into(window, pages)
        return PartReady(pages[0] * PAGE_SIZE, len(pages) * PAGE_SIZE)

    def _read_ahead(self, window: Window, pages: range, wanted_end: int) -> list[core.Span]:
        """The pages to fetch after this part's, while this one is fetched and copied.

        Only for a reader that reads on: it asked for more than one part holds,
        or this miss starts where its previous part ended. One part ahead, of this
        part's length (nor for writers, whose parts follow their reservation). The
        fetch is the central file's like any other: the next miss joins it, a close
        cancels it, its pages are dropped under memory pressure.

        Bounded by the cache size: while the cache has free frames for twice the
        read-ahead, it takes only those. A sequential reader of a file larger than
        the cache (which can be neither kept at its close nor viewed whole) drops
        its own parts behind it once free frames run short (:meth:`_drop_behind`).
        A sequential reader reads ahead while the pages the kernel file driver
        pins, plus twice the read-ahead, fit in the cache: the cache then makes
        room by evicting unpinned pages (those dropped behind first), never by a
        GiveBack round.
        """
        sequential = window.next_page == pages[0] and pages[0] > 0
        window.next_page = pages[-1] + 1
        if window.writable or not (sequential or wanted_end > window.next_page * PAGE_SIZE):
            return []
        ahead = core.part_pages(window, window.next_page * PAGE_SIZE, len(pages) * PAGE_SIZE)
        missing = core.missing_spans(window.file, core.spans_of(ahead))
        wanted = sum(hi - lo for lo, hi in missing)
        room, capacity = self._cache_room(), self.memory.quota(self.cache)
        # A file larger than the cache: it cannot be kept at its close, nor viewed whole.
        streaming = capacity is not None and core.pages_of(window.file.size) > capacity
        if sequential and streaming and room < 4 * len(pages):
            # the cache fills up: the unmaps take two grace periods, so start them early
            self._drop_behind(window, pages.start - len(pages))
        if not wanted or room >= 2 * wanted:
            return missing
        if not sequential or capacity is None:
            return []
        return missing if self._pinned() + 2 * wanted <= capacity else []

    def _call_pages(self, pages: range) -> range:
        """At most an eighth of the cache per call: the part, the part read ahead and the
        parts dropped behind (until their unmaps) then fit in the cache together."""
        capacity = self.memory.quota(self.cache)
        return pages if capacity is None else pages[: max(MIN_PART_PAGES, capacity // 8)]

    def _pinned(self) -> int:
        """Pages the kernel file driver holds (open files' and kept ones): at most its pins."""
        return sum(len(cfile.pages) for cfile in self.files.values()) + self.retained.pages

    def _drop_behind(self, window: Window, before: int) -> None:
        """A sequential reader of more than the cache holds: its parts wholly before page
        ``before`` are unlinked now, and their pages no window links any more go back to
        the cache once unmapped (after the grace periods, in the background; dirty
        pages are handed over first). Pages another window maps stay."""
        victims = [i for i, (first, n) in window.parts.items() if first + n <= before]
        if not victims:
            return
        spans = core.merged_spans(
            (first, first + n) for i in victims for first, n in (window.parts[i],)
        )
        unmapped = self.pager.remove_parts(window, victims)
        cfile = window.file
        done = anyio.Event()
        self._dropping.setdefault(cfile.key, []).append(done)

        async def release() -> None:
            try:
                for event in unmapped:
                    await event.wait()
                if self.files.get(cfile.key) is not cfile:
                    return  # retired meanwhile: its last close dropped or kept the pages
                await self.flusher.write_back(cfile, then_drop=lambda cf: core.idle_within(cf, spans))
            except OSError as exc:  # the pages stay (and dirty): the writer's fsync or close
                self.log.warning("drop-behind writeback failed", file=cfile.info.name,
                                 error=str(exc))
            finally:
                pending = self._dropping.get(cfile.key, [])
                if done in pending:
                    pending.remove(done)
                if not pending:
                    self._dropping.pop(cfile.key, None)
                done.set()

        self._spawn(release)

    async def _room_for(self, cfile: CentralFile, pages: range) -> None:
        """Before a fetch the free frames cannot hold: let the pages this file drops behind
        go back first (at most two grace periods), so the cache evicts them instead of
        asking every holder to give pages back."""
        pending = self._dropping.get(cfile.key)
        if not pending:
            return
        need = sum(hi - lo for lo, hi in core.missing_spans(cfile, core.spans_of(pages)))
        if need > self._cache_room():
            for event in list(pending):
                await event.wait()

    def _cache_room(self) -> int:
        """Frames the cache may still take without evicting anything."""
        free = self.memory.frames_free
        quota = self.memory.quota(self.cache)
        return free if quota is None else min(free, quota - self.memory.used(self.cache))

    async def _bring_in(
        self, window: Window, pages: range, ahead: list[core.Span]
    ) -> range:
        """Fetch the part's pages (then start the ``ahead`` ones); when the cache is short of
        frames, a smaller part.

        The process asked for a part sized for throughput; a part of the first
        half still serves it (it misses again further on), so memory pressure
        shrinks parts down to ``MIN_PART_PAGES`` before it becomes ENOMEM.
        """
        relieved = False
        while True:
            try:
                await self.pager.ensure_pages(window.file, pages, window, ahead)
                return pages
            except OSError as exc:
                if exc.errno != errno.ENOMEM:
                    raise
                if not relieved:  # the process's quota: write back and drop its idle pages, once
                    relieved = True
                    await self._relieve(window.proc)
                elif len(pages) > MIN_PART_PAGES:
                    pages = pages[: len(pages) // 2]
                else:
                    raise

    async def _relieve(self, proc: Process) -> None:
        """Make room in a process's quota: its files' parts unmapped, idle pages written and dropped."""
        files = list({w.file for w in self.windows.values() if w.proc is proc})
        await self.flusher.give_back(files, len(self.memory.frames_of(proc.port)) or 1)

    # ------------------------------------------------------------- dirty, sizes
    @handles(Flush)
    async def on_flush(self, env: Envelope, msg: Flush) -> None:
        with self._op(self._window(env, msg.handle)) as window:
            await self.flusher.write_back(window.file)

    @handles(Fsync)
    async def on_fsync(self, env: Envelope, msg: Fsync) -> None:
        with self._op(self._window(env, msg.handle)) as window:
            cfile = window.file
            await self.flusher.write_back(cfile, durable=True)
            await self.flusher.stamp_mtime(cfile)
            await self.endpoint.call(cfile.fs, FsFsync(cfile.fs_handle), Ok, timeout=120)

    @handles(SetTimes)
    async def on_set_times(self, env: Envelope, msg: SetTimes) -> FsInfo:
        with self._op(self._writable_window(env, msg.handle)) as window:
            return await self.flusher.set_times(window.file, msg.mtime)

    @handles(SetSize)
    async def on_set_size(self, env: Envelope, msg: SetSize) -> SizeSet:
        with self._op(self._writable_window(env, msg.handle)) as window:
            core.check_range(msg.size, 0)
            await self.flusher.set_size(
                window.file, msg.size, reserve=msg.reserve, write_start=msg.write_start
            )
            if msg.reserve and 0 <= msg.write_start < msg.map_end:
                await self._map_for_write(window, msg.write_start, msg.map_end)
            return SizeSet(window.file.size, window.file.info.alloc_size)

    async def _map_for_write(
        self, window: Window, start: int, end: int, zeros: list[FileExtent] | None = None
    ) -> None:
        """Map the pages a reserving write is about to store into: its ``CachePart`` folded in.

        Pages past the size on disk come from the cache as zero-filled frames (no
        read). A failure here is the write's to meet (its own ``CachePart`` then
        reports it), not the reservation's. ``zeros``: the clusters behind
        ``start..end``, never written (a create's reservation): the cache is asked
        for their zero pages directly, without a ``MapRange``.
        """
        pages = core.part_pages(window, start, end - start)
        if not pages:
            return
        try:
            if window.writer.count > PARTS_BEFORE_SCAN:
                self.pager.second_chance(window)  # as on a miss
            await self.pager.ensure_pages(window.file, pages, window, zeros=zeros or None)
            self.pager.map_into(window, pages)
        except OSError as exc:
            self.log.debug("nothing mapped at reserve", file=window.file.info.name, error=str(exc))

    @handles(StatHandle)
    async def on_stat_handle(self, env: Envelope, msg: StatHandle) -> FsInfo:
        """fstat: what the file system says, with the size every process sees."""
        with self._op(self._window(env, msg.handle)) as window:
            cfile = window.file
            info: FsInfo = await self.endpoint.call(cfile.fs, FsStatHandle(cfile.fs_handle), FsInfo)
            return self._for_process(cfile.fs, info)

    # ---------------------------------------------------------------- the cache
    @handles(SectorsReady)
    async def on_sectors_ready(self, env: Envelope, msg: SectorsReady) -> None:
        self.pager.sectors_ready(env, msg)

    @handles(CacheFailed)
    async def on_cache_failed(self, env: Envelope, msg: CacheFailed) -> None:
        self.pager.cache_failed(env, msg)

    @handles(GiveBack)
    async def on_give_back(self, env: Envelope, msg: GiveBack) -> None:
        """The cache is short of frames: unmap parts and release their pins (cache only)."""
        if env.src != self.cache:
            raise PermissionError(1, f"GiveBack is the cache's to send, not {env.src}'s")
        released = self._release_retained(self.retained.oldest(msg.pages))
        if released < msg.pages:
            files = list(self.files.values())
            released += await self.flusher.give_back(files, msg.pages - released)
        await self.endpoint.send(self.cache, GiveBackDone(msg.request, released))
