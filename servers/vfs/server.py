"""The kernel file driver (VFS): central file objects, per-process windows, FileMaps.

One :class:`CentralFile` per open file, shared by every process that has it
open, holds the file's cached pages (file page -> frame). Each open handle has
a :class:`Window`: a reserved range in the process's linear address space laid
out as::

    0x0000  FileMap page            (read-only to the process)
    0x1000  file state page         (read-only; one frame shared by all openers)
    0x2000  per-process file page   (writable: positions, per-part counters)
    0x3000  data: file position p lives at DATA_OFFSET + p (part base = p)

A read miss follows DESIGN §4: ``CachePart`` from the process, ``MapRange`` to
the file system, ``CacheRead`` from the file system to the cache, the driver
DMAs into cache frames, ``SectorsReady`` comes back here, the frames are mapped
into every waiting process and FileMap parts are inserted (lock-free order,
see ``filemap.py``). A page that is exactly one aligned cache page is mapped
as is (zero-copy); any other page takes the copy path: a private frame filled
by counted copies. Bytes past end of file always read as zero.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from microkernel.addrspace import AddressSpace, make_address_space
from microkernel.errors import KernelError
from microkernel.ipc import Envelope, Router
from microkernel.memory import PAGE_SIZE, PhysicalMemory
from microkernel.process import Process, ProcessTable
from microkernel.protocol import Ok
from microkernel.server import Server, handles
from microkernel.trace import current_corr
from servers.cache.protocol import (
    CacheFailed,
    CacheMap,
    Extent,
    GiveBack,
    GiveBackDone,
    MarkDirty,
    Pages,
    Release,
    SectorsReady,
    Writeback,
)
from servers.fat.protocol import (
    FileExtent,
    FsClose,
    FsDir,
    FsFsync,
    FsInfo,
    FsMkdir,
    FsOpen,
    FsOpened,
    FsReadDir,
    FsRename,
    FsRmdir,
    FsSetSize,
    FsSetTimes,
    FsStat,
    FsStatFs,
    FsStatHandle,
    FsUnlink,
    FsVolume,
    Mapped,
    MapRange,
)
from servers.vfs.filemap import FileMapFull, FileMapWriter
from servers.vfs.pages import FileState, FileStatePage, ProcessFilePage
from servers.vfs.protocol import (
    CachePart,
    Close,
    Data,
    Exit,
    Flush,
    Fsync,
    Mkdir,
    Open,
    Opened,
    OpenFlags,
    PartReady,
    Read,
    ReadDir,
    Rename,
    Rmdir,
    SetSize,
    SetTimes,
    SizeSet,
    Stat,
    StatFs,
    Syscall,
    Unlink,
    Write,
    Written,
)
from servers.vfs.second_chance import AGE_INITIAL, scan

FILEMAP_OFFSET = 0
STATE_OFFSET = PAGE_SIZE
PROCPAGE_OFFSET = 2 * PAGE_SIZE
DATA_OFFSET = 3 * PAGE_SIZE
WINDOW_DATA = 1 << 31  # part bases are int32: a window maps up to 2 GiB of a file
PARTS_BEFORE_SCAN = 112  # a miss runs second chance once the FileMap is half full
GRACE_S = 0.02
FETCH_TIMEOUT_S = 60.0  # a disk that never answers becomes ETIMEDOUT, not a hang  # removal -> clear entry -> unmap: longer than any prompt reader's lookup


class BadHandle(KernelError):
    default_errno = 9  # EBADF


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


@dataclass(slots=True)
class Fetch:
    """A MapRange/CacheRead in flight for some pages of a file."""

    pages: list[int]
    arrived: anyio.Event = field(default_factory=anyio.Event)  # SectorsReady or CacheFailed
    done: anyio.Event = field(default_factory=anyio.Event)  # pages installed (or failed)
    ready: SectorsReady | None = None
    error: OSError | None = None


@dataclass(eq=False, slots=True)
class CentralFile:
    key: tuple[str, int]  # (file system server, the file system's file id)
    fs: str
    fs_handle: int
    info: FsInfo
    state_frame: int
    state: FileStatePage
    pages: dict[int, FilePage] = field(default_factory=dict)
    inflight: dict[int, Fetch] = field(default_factory=dict)
    windows: set[Window] = field(default_factory=set)
    modified: bool = False
    published: int = -1  # the size processes see; <= the file system's size (reservations)

    @property
    def size(self) -> int:
        """The published size: what every process sees in the state page."""
        return self.info.size if self.published < 0 else self.published

    @property
    def fat_size(self) -> int:
        """The size in the file system: published size plus any reservation of a writer."""
        return self.info.size


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
    mapped: set[int] = field(default_factory=set)  # file pages linked into a FileMap part
    generation: dict[int, int] = field(default_factory=dict)  # page -> times it was mapped
    parts: dict[int, tuple[int, int]] = field(default_factory=dict)  # part -> (first page, n)
    ages: dict[int, int] = field(default_factory=dict)

    @property
    def writable(self) -> bool:
        return bool(self.flags & OpenFlags.WRITE)


class VfsServer(Server):
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
        self.filesystems = list(filesystems)
        self.mounts = MountTable(mounts or {"/": filesystems[0]})
        self.cache = cache
        self.scan_interval = scan_interval
        self.volumes: dict[str, FsVolume] = {}
        self.files: dict[tuple[str, int], CentralFile] = {}
        self.windows: dict[int, Window] = {}
        self._handles = itertools.count(1)
        self._tags = itertools.count(1)
        self._fetches: dict[int, Fetch] = {}
        self._open_lock = anyio.Lock()
        self._retiring: dict[tuple[str, int], anyio.Event] = {}

    # ------------------------------------------------------------------ lifecycle
    async def setup(self) -> None:
        for fs in self.filesystems:
            self.volumes[fs] = await self.endpoint.call(fs, FsStatFs(), FsVolume)

    async def teardown(self) -> None:
        for window in list(self.windows.values()):
            await self._close(window)

    async def background(self) -> None:
        """Second chance once per ``scan_interval``: untouched parts age out of the FileMaps."""
        while True:
            await anyio.sleep(self.scan_interval)
            for window in list(self.windows.values()):
                if window.handle in self.windows:
                    await self._second_chance(window)

    def _window(self, env: Envelope, handle: int) -> Window:
        window = self.windows.get(handle)
        if window is None or window.proc.port != env.src:
            raise BadHandle(f"handle {handle} is not open in {env.src}")
        return window

    def _writable_window(self, env: Envelope, handle: int) -> Window:
        window = self._window(env, handle)
        if not window.writable:
            raise OSError(9, f"handle {handle} is not open for writing")  # EBADF
        return window

    # ------------------------------------------------------------------ open/close
    @handles(Open)
    async def on_open(self, env: Envelope, msg: Open) -> Opened:
        proc = self.processes.by_port.get(env.src)
        if proc is None:
            raise BadHandle(f"{env.src} is not a process")
        flags = OpenFlags(msg.flags)
        fs, path = self.mounts.route(msg.path)
        if flags & OpenFlags.WRITE and self.volumes[fs].read_only:
            raise OSError(30, f"{msg.path}: read-only file system")
        async with self._open_lock:
            cfile, surplus = await self._central(fs, path, flags)
            window = self._new_window(proc, cfile, flags)
        try:  # the window holds the central file now: awaiting cannot retire it
            if surplus:
                await self.endpoint.call(fs, FsClose(surplus), Ok)
            if flags & OpenFlags.TRUNCATE and (cfile.size or cfile.fat_size):
                await self._set_size(cfile, 0)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close(window)
            raise
        return Opened(window.handle, 0, cfile.size, self.volumes[fs].aligned)

    async def _central(
        self, fs: str, path: str, flags: OpenFlags
    ) -> tuple[CentralFile, int]:
        """The central file of what ``path`` names, found by the file system's identity.

        Every open asks the file system (which resolves aliases, case and renamed
        parents to one entry and says which file that is); a second handle onto a
        file already open is given back at once. Truncation goes through the
        central file, so the pages every process has mapped are unmapped first.
        Returns the central file and the file system handle to give back (0: none).
        """
        create, excl = bool(flags & OpenFlags.CREATE), bool(flags & OpenFlags.EXCLUSIVE)
        opened: FsOpened = await self.endpoint.call(fs, FsOpen(path, create, excl), FsOpened)
        key = (fs, opened.info.file_id)
        retiring = self._retiring.get(key)
        if retiring is not None:  # the last close is writing back: its size is not final yet
            await retiring.wait()
            info: FsInfo = await self.endpoint.call(fs, FsStatHandle(opened.handle), FsInfo)
            opened = FsOpened(opened.handle, info)
        cfile = self.files.get(key)
        if cfile is not None:
            return cfile, opened.handle
        return self._new_central(key, opened), 0

    def _new_central(self, key: tuple[str, int], opened: FsOpened) -> CentralFile:
        fs = key[0]
        (frame,) = self.memory.alloc("vfs", 1)
        self.memory.zero([frame])
        cfile = CentralFile(
            key,
            fs,
            opened.handle,
            opened.info,
            frame,
            FileStatePage(self.memory.view(frame), writable=True),
        )
        self._publish_state(cfile)
        self.files[key] = cfile
        return cfile

    def _publish_state(self, cfile: CentralFile) -> None:
        info = cfile.info
        cfile.state.write(
            FileState(
                cfile.size, info.alloc_size, info.attributes, int(info.mtime * 1e9), info.name
            )
        )

    def _new_window(self, proc: Process, cfile: CentralFile, flags: OpenFlags) -> Window:
        fm_frame, pp_frame = self.memory.alloc("vfs", 2)
        self.memory.zero([fm_frame, pp_frame])
        space = make_address_space(self.memory, DATA_OFFSET + WINDOW_DATA)
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
        return window

    @handles(Close)
    async def on_close(self, env: Envelope, msg: Close) -> None:
        await self._close(self._window(env, msg.handle))

    @handles(Exit)
    async def on_exit(self, env: Envelope, msg: Exit) -> None:
        for window in [w for w in self.windows.values() if w.proc.port == env.src]:
            await self._close(window)

    async def _close(self, window: Window) -> None:
        if self.windows.pop(window.handle, None) is None:
            return
        cfile = window.file
        self._collect_dirty(window)
        for index in list(window.parts):
            window.writer.remove(index)
        window.space.close()
        window.proc.windows.pop(window.handle, None)
        self.memory.release([window.filemap_frame, window.procpage_frame])
        cfile.windows.discard(window)
        if not cfile.windows:
            await self._retire(cfile)

    async def _retire(self, cfile: CentralFile) -> None:
        """Last close: write back, give the pages back to the cache, close in the file system.

        The file leaves the table first and an open of the same path waits for
        the retirement, so no new window can join a central file being torn down.
        """
        if self.files.get(cfile.key) is cfile:
            del self.files[cfile.key]
        done = self._retiring[cfile.key] = anyio.Event()
        try:
            await self._write_back(cfile)
            await self._trim(cfile)
            await self._stamp_mtime(cfile)
            self._drop_pages(cfile, list(cfile.pages))
            self.memory.release([cfile.state_frame])
            await self.endpoint.call(cfile.fs, FsClose(cfile.fs_handle), Ok)
        finally:
            if self._retiring.get(cfile.key) is done:
                del self._retiring[cfile.key]
            done.set()

    # ------------------------------------------------------------------ CachePart
    @handles(CachePart)
    async def on_cache_part(self, env: Envelope, msg: CachePart) -> PartReady:
        window = self._window(env, msg.handle)
        cfile = window.file
        first = msg.position // PAGE_SIZE
        limit = cfile.fat_size if window.writable else cfile.size
        end = min(msg.position + max(msg.size, 1), _round_up(limit), WINDOW_DATA)
        if msg.position >= limit or msg.position < 0:
            return PartReady(msg.position, 0)
        pages = list(range(first, _pages(end)))
        if window.writer.count > PARTS_BEFORE_SCAN:
            await self._second_chance(window)  # DESIGN §5: the scan also runs on a miss
        await self._ensure_pages(cfile, pages)
        self._map_into(window, pages)
        return PartReady(first * PAGE_SIZE, len(pages) * PAGE_SIZE)

    async def _ensure_pages(self, cfile: CentralFile, pages: list[int]) -> None:
        """Bring the file pages into ``cfile.pages``: join fetches in flight, start the rest."""
        waits = {id(f): f for p in pages if (f := cfile.inflight.get(p)) is not None}
        missing = [p for p in pages if p not in cfile.pages and p not in cfile.inflight]
        for run in _runs(missing):
            fetch = Fetch(run)
            for p in run:
                cfile.inflight[p] = fetch
            waits[id(fetch)] = fetch
            try:
                await self._fetch(cfile, fetch)
            finally:
                for p in run:
                    cfile.inflight.pop(p, None)
                fetch.done.set()
        for fetch in waits.values():
            await self._traced_wait(fetch.done)
            if fetch.error is not None:
                raise OSError(fetch.error.errno, fetch.error.strerror)

    async def _fetch(self, cfile: CentralFile, fetch: Fetch) -> None:
        tag = next(self._tags)
        self._fetches[tag] = fetch
        start, length = fetch.pages[0] * PAGE_SIZE, len(fetch.pages) * PAGE_SIZE
        try:
            mapped: Mapped = await self.endpoint.call(
                cfile.fs, MapRange(cfile.fs_handle, start, length, self.name, tag), Mapped
            )
            if not mapped.extents:
                raise OSError(
                    5, f"{cfile.info.name}: no clusters behind bytes {start}..{start + length}"
                )
            with anyio.fail_after(FETCH_TIMEOUT_S):
                await self._traced_wait(fetch.arrived)
            if fetch.error is not None:
                raise fetch.error
        except OSError as exc:
            fetch.error = exc
            raise
        finally:
            self._fetches.pop(tag, None)
        assert fetch.ready is not None
        self._install(cfile, fetch.pages, mapped.extents, fetch.ready)

    async def _traced_wait(self, event: anyio.Event) -> None:
        """Wait for the cache (or a joined fetch); a "wait" span when tracing."""
        tracer = self.router.tracer
        if not tracer.enabled or event.is_set():
            await event.wait()
            return
        start = time.monotonic_ns()
        await event.wait()
        tracer.span(self.name, "wait", 0, current_corr.get(), start, time.monotonic_ns())

    @handles(SectorsReady)
    async def on_sectors_ready(self, env: Envelope, msg: SectorsReady) -> None:
        fetch = self._fetches.get(msg.tag)
        if fetch is None:  # the requester gave up: return the pins
            await self.endpoint.send(self.cache, Release(msg.device, [p.lba for p in msg.pages]))
            return
        fetch.ready = msg
        fetch.arrived.set()

    @handles(CacheFailed)
    async def on_cache_failed(self, env: Envelope, msg: CacheFailed) -> None:
        fetch = self._fetches.get(msg.tag)
        if fetch is not None:
            fetch.error = OSError(msg.errno, msg.message)
            fetch.arrived.set()

    def _install(
        self, cfile: CentralFile, pages: list[int], extents: list[FileExtent], ready: SectorsReady
    ) -> None:
        """Turn the delivered cache pages into file pages: mapped as is, or copied when not aligned."""
        volume = self.volumes[cfile.fs]
        ss = volume.logical_sector_size
        frames = {p.lba: p.phys for p in ready.pages}
        used: set[int] = set()
        wanted = set(pages)
        for page, lba in _direct_pages(extents, ss, volume.alignment_offset):
            phys = frames.get(lba)
            if page in wanted and phys is not None:
                cfile.pages[page] = FilePage(phys, lba)
                used.add(lba)
                wanted.discard(page)
        for page in sorted(wanted):
            cfile.pages[page] = self._copy_page(cfile, page, extents, frames, ss)
        last = (cfile.fat_size - 1) // PAGE_SIZE
        if last in cfile.pages and last in set(pages):
            self._zero_past_eof(cfile, last)
        extra = [lba for lba in frames if lba not in used]
        if extra:
            self.endpoint.send_nowait(self.cache, Release(ready.device, extra))

    def _copy_page(
        self,
        cfile: CentralFile,
        page: int,
        extents: list[FileExtent],
        frames: dict[int, int],
        ss: int,
    ) -> FilePage:
        """The copy path: a private page-aligned frame filled from the cache pages (counted)."""
        (frame,) = self.memory.alloc("vfs", 1)
        self.memory.zero([frame])
        sources = []
        lo, hi = page * PAGE_SIZE, min((page + 1) * PAGE_SIZE, cfile.fat_size)
        align = self.volumes[cfile.fs].alignment_offset
        for src_lba, src_off, dst_off, n in _byte_sources(lo, hi, extents, ss, align):
            plba = _page_lba(src_lba, ss, align)
            inpage = (src_lba - plba) * ss + src_off
            self.memory.copy(
                self.memory.view(frame + dst_off, n),
                self.memory.view(frames[plba] + inpage, n),
                reason="copy-path",
            )
            sources.append((plba, inpage, dst_off, n))
        return FilePage(frame, None, tuple(sources))

    def _zero_past_eof(self, cfile: CentralFile, page: int) -> None:
        tail = cfile.fat_size - page * PAGE_SIZE
        if 0 <= tail < PAGE_SIZE:
            fp = cfile.pages[page]
            self.memory.view(fp.phys + tail, PAGE_SIZE - tail)[:] = bytes(PAGE_SIZE - tail)

    def _map_into(self, window: Window, pages: list[int]) -> None:
        """Map the file pages into the window and publish them as FileMap parts."""
        new = [p for p in pages if p not in window.mapped]
        for run in _runs(new):
            frames = [window.file.pages[p].phys for p in run]
            window.space.map(DATA_OFFSET + run[0] * PAGE_SIZE, frames, writable=window.writable)
            window.mapped.update(run)
            for p in run:
                window.generation[p] = window.generation.get(p, 0) + 1
            zero_copy = sum(1 for p in run if window.file.pages[p].cache_lba is not None)
            self.router.counters.bytes_zero_copy += zero_copy * PAGE_SIZE
            self._insert_part(window, run)

    def _insert_part(self, window: Window, run: list[int]) -> None:
        if window.writer.free_count == 0:
            self._evict_parts(window, max(1, len(window.parts) // 8))
        try:
            index = window.writer.insert(
                run[0] * PAGE_SIZE, len(run) * PAGE_SIZE, run[0] * PAGE_SIZE
            )
        except FileMapFull:
            self._evict_parts(window, len(window.parts) // 4 + 1)
            index = window.writer.insert(
                run[0] * PAGE_SIZE, len(run) * PAGE_SIZE, run[0] * PAGE_SIZE
            )
        window.procpage.reset_part(index)
        window.parts[index] = (run[0], len(run))
        window.ages[index] = AGE_INITIAL

    # ------------------------------------------------------------- removing parts
    def _evict_parts(self, window: Window, count: int) -> None:
        """Remove the least recently aged parts now (FileMap full): unlink, then unmap after grace."""
        victims = sorted(window.parts, key=lambda i: window.ages.get(i, 0))[:count]
        self._remove_parts(window, victims)

    def _remove_parts(self, window: Window, indexes: Iterable[int]) -> None:
        """Unlink parts (lock-free order), collect dirt, schedule clear + unmap after the grace."""
        for index in indexes:
            first, n = window.parts.pop(index)
            window.ages.pop(index, None)
            if window.procpage.take_dirty(index):
                self._mark_dirty(window.file, range(first, first + n))
            window.writer.remove(index)
            # The pages count as unmapped at once (a miss maps them again under a new
            # part); the real unmap waits out the grace and spares pages mapped again.
            window.mapped.difference_update(range(first, first + n))
            self._later(window, index, first, n)

    def _later(self, window: Window, index: int, first: int, n: int) -> None:
        """Clear the entry after one grace period and unmap after another."""

        generations = {p: window.generation.get(p, 0) for p in range(first, first + n)}

        async def retire() -> None:
            await anyio.sleep(GRACE_S)
            if window.handle in self.windows:
                # Stores made through a lookup that began before the removal land in the
                # grace period: take the dirty flag again before the index can be reused.
                if window.procpage.take_dirty(index):
                    self._mark_dirty(window.file, range(first, first + n))
                window.writer.clear_part(index)
            await anyio.sleep(GRACE_S)
            if window.handle in self.windows:
                stale = [
                    p
                    for p, g in generations.items()
                    if p not in window.mapped and window.generation.get(p) == g
                ]
                for run in _runs(stale):
                    window.space.unmap(DATA_OFFSET + run[0] * PAGE_SIZE, len(run), discard=True)

        self._spawn(retire)

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        tg = self._retire_group
        assert tg is not None
        tg.start_soon(fn)

    _retire_group: anyio.abc.TaskGroup | None = None

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._retire_group = tg
            await super().serve(task_status=task_status)
            tg.cancel_scope.cancel()

    async def _second_chance(self, window: Window) -> None:
        result = scan(window.procpage, list(window.parts), window.ages)
        window.ages = dict(result.ages)
        victims = [v.index for v in result.victims if v.index in window.parts]
        if victims:
            self._remove_parts(window, victims)

    # ------------------------------------------------------------------ dirty data
    def _mark_dirty(self, cfile: CentralFile, pages: Iterable[int]) -> None:
        for p in pages:
            fp = cfile.pages.get(p)
            if fp is not None:
                fp.dirty = True
                cfile.modified = True

    def _collect_dirty(self, window: Window) -> None:
        for index, (first, n) in window.parts.items():
            if window.procpage.take_dirty(index):
                self._mark_dirty(window.file, range(first, first + n))

    async def _write_back(self, cfile: CentralFile, *, durable: bool = False) -> None:
        """Hand dirty pages to the cache: zero-copy pages are marked, private copies copied back."""
        for window in cfile.windows:
            self._collect_dirty(window)
        dirty = [p for p, fp in cfile.pages.items() if fp.dirty and p * PAGE_SIZE < cfile.fat_size]
        marked: list[int] = []
        written: list[int] = []
        volume = self.volumes[cfile.fs]
        for p in dirty:
            fp = cfile.pages[p]
            fp.dirty = False
            if fp.cache_lba is not None:
                marked.append(fp.cache_lba)
            else:
                written.extend(await self._copy_back(volume, fp))
        if marked:
            await self.endpoint.call(self.cache, MarkDirty(volume.device, marked), Ok)
        if durable and (marked or written):
            await self.endpoint.call(
                self.cache, Writeback(volume.device, sorted({*marked, *written})), Ok, timeout=120
            )

    async def _copy_back(self, volume: FsVolume, fp: FilePage) -> list[int]:
        ss, device = volume.logical_sector_size, volume.device
        extents = [Extent(lba, PAGE_SIZE // ss) for lba in sorted({s[0] for s in fp.sources})]
        if not extents:
            return []
        reply: Pages = await self.endpoint.call(self.cache, CacheMap(device, extents), Pages)
        frames = {p.lba: p.phys for p in reply.pages}
        for plba, inpage, dst, n in fp.sources:
            self.memory.copy(
                self.memory.view(frames[plba] + inpage, n),
                self.memory.view(fp.phys + dst, n),
                reason="copy-path",
            )
        lbas = list(frames)
        await self.endpoint.call(self.cache, MarkDirty(device, lbas), Ok)
        self.endpoint.send_nowait(self.cache, Release(device, lbas))
        return lbas

    def _drop_pages(self, cfile: CentralFile, pages: list[int]) -> None:
        pins = []
        for p in pages:
            fp = cfile.pages.pop(p, None)
            if fp is None:
                continue
            if fp.cache_lba is not None:
                pins.append(fp.cache_lba)
            else:
                self.memory.release([fp.phys])
        if pins:
            self.endpoint.send_nowait(self.cache, Release(self.volumes[cfile.fs].device, pins))

    @handles(Flush)
    async def on_flush(self, env: Envelope, msg: Flush) -> None:
        await self._write_back(self._window(env, msg.handle).file)

    @handles(Fsync)
    async def on_fsync(self, env: Envelope, msg: Fsync) -> None:
        cfile = self._window(env, msg.handle).file
        await self._trim(cfile)
        await self._write_back(cfile, durable=True)
        await self._stamp_mtime(cfile)
        await self.endpoint.call(cfile.fs, FsFsync(cfile.fs_handle), Ok, timeout=120)

    @handles(SetTimes)
    async def on_set_times(self, env: Envelope, msg: SetTimes) -> FsInfo:
        window = self._writable_window(env, msg.handle)
        cfile = window.file
        await self._write_back(cfile)
        await self.endpoint.call(cfile.fs, FsSetTimes(cfile.fs_handle, msg.mtime), Ok)
        cfile.modified = False  # an explicit time wins over the automatic one at close
        info: FsInfo = await self.endpoint.call(cfile.fs, FsStatHandle(cfile.fs_handle), FsInfo)
        cfile.info = msgspec.structs.replace(info, size=cfile.fat_size)
        self._publish_state(cfile)
        return msgspec.structs.replace(info, size=cfile.size)

    # ------------------------------------------------------------------ SetSize
    @handles(SetSize)
    async def on_set_size(self, env: Envelope, msg: SetSize) -> SizeSet:
        window = self._writable_window(env, msg.handle)
        if msg.size < 0:
            raise OSError(22, f"negative size {msg.size}")
        await self._set_size(window.file, msg.size, reserve=msg.reserve)
        return SizeSet(window.file.size, window.file.info.alloc_size)

    async def _set_size(self, cfile: CentralFile, size: int, *, reserve: bool = False) -> None:
        """Change the size; ``reserve`` only makes room in the file system for a writer.

        An extending write reserves first (the clusters are allocated and zero
        filled), stores its bytes into the mapping, then publishes the new size:
        a concurrent reader therefore never sees the size before the data.
        """
        cfile.modified = True
        if reserve:
            if size > cfile.fat_size:
                await self._fs_set_size(cfile, size)
            return
        if size < cfile.size:
            await self._shrink(cfile, size)
        if (size < cfile.fat_size and size < cfile.size) or size > cfile.fat_size:
            await self._fs_set_size(cfile, size)
        cfile.published = size
        self._publish_state(cfile)

    async def _fs_set_size(self, cfile: CentralFile, size: int) -> None:
        published = cfile.size
        cfile.info = await self.endpoint.call(cfile.fs, FsSetSize(cfile.fs_handle, size), FsInfo)
        cfile.published = min(published, size)
        last = (size - 1) // PAGE_SIZE if size else -1
        if last in cfile.pages:
            self._zero_past_eof(cfile, last)

    async def _stamp_mtime(self, cfile: CentralFile) -> None:
        """A file written since its last stamp gets the current time (at fsync and last close)."""
        if cfile.modified:
            await self.endpoint.call(cfile.fs, FsSetTimes(cfile.fs_handle, time.time()), Ok)

    async def _trim(self, cfile: CentralFile) -> None:
        """Give back a writer's unused reservation, so the directory entry says the true size."""
        if cfile.fat_size != cfile.size:
            await self._fs_set_size(cfile, cfile.size)

    async def _shrink(self, cfile: CentralFile, size: int) -> None:
        """Unmap every part reaching past the new end before the clusters go back to the FAT."""
        keep = _pages(size)
        for window in list(cfile.windows):
            gone = [i for i, (first, n) in window.parts.items() if first + n > keep]
            self._remove_parts(window, gone)
        await anyio.sleep(2.5 * GRACE_S)
        doomed = [p for p in cfile.pages if p >= keep]
        self._drop_pages(cfile, doomed)

    # --------------------------------------------------------------- legacy copies
    @handles(Read)
    async def on_read(self, env: Envelope, msg: Read) -> Data:
        cfile = self._window(env, msg.handle).file
        end = min(msg.position + msg.size, cfile.size)
        if msg.position >= end:
            return Data(b"")
        pages = list(range(msg.position // PAGE_SIZE, _pages(end)))
        await self._ensure_pages(cfile, pages)
        out = bytearray(end - msg.position)
        for p in pages:
            lo, hi = max(p * PAGE_SIZE, msg.position), min((p + 1) * PAGE_SIZE, end)
            base = cfile.pages[p].phys
            self.memory.copy(
                memoryview(out)[lo - msg.position : hi - msg.position],
                self.memory.view(base + lo - p * PAGE_SIZE, hi - lo),
                reason="legacy-read",
            )
        return Data(bytes(out))

    @handles(Write)
    async def on_write(self, env: Envelope, msg: Write) -> Written:
        window = self._writable_window(env, msg.handle)
        cfile = window.file
        end = msg.position + len(msg.data)
        if end > cfile.size:
            await self._set_size(cfile, end)
        pages = list(range(msg.position // PAGE_SIZE, _pages(end)))
        await self._ensure_pages(cfile, pages)
        src = memoryview(msg.data)
        for p in pages:
            lo, hi = max(p * PAGE_SIZE, msg.position), min((p + 1) * PAGE_SIZE, end)
            self.memory.copy(
                self.memory.view(cfile.pages[p].phys + lo - p * PAGE_SIZE, hi - lo),
                src[lo - msg.position : hi - msg.position],
                reason="legacy-write",
            )
        self._mark_dirty(cfile, pages)
        return Written(len(msg.data))

    # ----------------------------------------------------------------- namespace
    @handles(Stat)
    async def on_stat(self, env: Envelope, msg: Stat) -> FsInfo:
        fs, path = self.mounts.route(msg.path)
        info: FsInfo = await self.endpoint.call(fs, FsStat(path), FsInfo)
        cfile = self.files.get((fs, info.file_id))
        if cfile is not None:  # open: the size every process sees, not the directory entry's
            return msgspec.structs.replace(info, size=cfile.size)
        return info

    @handles(ReadDir)
    async def on_readdir(self, env: Envelope, msg: ReadDir) -> FsDir:
        fs, path = self.mounts.route(msg.path)
        listing: FsDir = await self.endpoint.call(fs, FsReadDir(path), FsDir)
        extra = [await self._mount_info(name, f) for name, f in self.mounts.below(msg.path)]
        return FsDir(listing.entries + extra) if extra else listing

    async def _mount_info(self, name: str, fs: str) -> FsInfo:
        """A mount point shows in its parent's listing as the mounted volume's root."""
        root: FsInfo = await self.endpoint.call(fs, FsStat("/"), FsInfo)
        return msgspec.structs.replace(root, name=name, short_name=name.upper()[:12])

    @handles(Mkdir)
    async def on_mkdir(self, env: Envelope, msg: Mkdir) -> FsInfo:
        fs, path = self.mounts.route(msg.path)
        info: FsInfo = await self.endpoint.call(fs, FsMkdir(path), FsInfo)
        return info

    @handles(Rmdir)
    async def on_rmdir(self, env: Envelope, msg: Rmdir) -> None:
        fs, path = self.mounts.route(msg.path)
        await self.endpoint.call(fs, FsRmdir(path), Ok)

    @handles(Unlink)
    async def on_unlink(self, env: Envelope, msg: Unlink) -> None:
        fs, path = self.mounts.route(msg.path)
        await self.endpoint.call(fs, FsUnlink(path), Ok)

    @handles(Rename)
    async def on_rename(self, env: Envelope, msg: Rename) -> None:
        fs, src = self.mounts.route(msg.src)
        dst_fs, dst = self.mounts.route(msg.dst)
        if dst_fs != fs:
            raise OSError(18, f"{msg.src} -> {msg.dst}: rename across volumes")  # EXDEV
        await self.endpoint.call(fs, FsRename(src, dst), Ok)

    @handles(StatFs)
    async def on_statfs(self, env: Envelope, msg: StatFs) -> FsVolume:
        fs, _ = self.mounts.route(msg.path)
        volume: FsVolume = await self.endpoint.call(fs, FsStatFs(), FsVolume)
        self.volumes[fs] = volume
        return volume

    # ---------------------------------------------------------------- low memory
    @handles(GiveBack)
    async def on_give_back(self, env: Envelope, msg: GiveBack) -> None:
        """The cache is short of frames: unmap parts (least used first) and release their pins."""
        released = 0
        for cfile in list(self.files.values()):
            if released >= msg.pages:
                break
            for window in list(cfile.windows):
                self._evict_parts(window, len(window.parts))
            await anyio.sleep(2.5 * GRACE_S)
            await self._write_back(cfile)
            idle = [
                p for p, fp in cfile.pages.items() if not any(p in w.mapped for w in cfile.windows)
            ]
            released += sum(1 for p in idle if cfile.pages[p].cache_lba is not None)
            self._drop_pages(cfile, idle)
        await self.endpoint.send(self.cache, GiveBackDone(msg.request, released))


class MountTable:
    """Which file system serves a path: the longest mounted prefix wins (case-insensitive).

    The first volume is mounted at ``/``; boot mounts each further device at
    ``/<device name>``, like a Unix mount shadowing a directory of that name.
    """

    def __init__(self, mounts: dict[str, str]) -> None:
        if "/" not in mounts:
            raise ValueError(f"no file system is mounted at / (mounts: {mounts})")
        self._mounts = sorted(
            ((_normalise(point), fs) for point, fs in mounts.items()),
            key=lambda m: -len(m[0]),
        )

    def route(self, path: str) -> tuple[str, str]:
        """(file system, path within it) for an absolute path."""
        norm = _normalise(path)
        for point, fs in self._mounts:
            if point == "/":
                return fs, path
            if norm == point or norm.startswith(point + "/"):
                depth = point.count("/")
                inner = "/".join(p for p in path.split("/") if p and p != ".")
                return fs, "/" + "/".join(inner.split("/")[depth:])
        raise AssertionError("unreachable: / is always mounted")

    def below(self, directory: str) -> list[tuple[str, str]]:
        """(name, file system) of the mount points directly inside ``directory``."""
        norm = _normalise(directory).rstrip("/")
        out = []
        for point, fs in self._mounts:
            parent, _, name = point.rpartition("/")
            if point != "/" and parent == norm:
                out.append((name, fs))
        return out


# ---------------------------------------------------------------------- helpers
def _normalise(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts).lower()


def _pages(nbytes: int) -> int:
    return -(-nbytes // PAGE_SIZE)


def _round_up(nbytes: int) -> int:
    return _pages(nbytes) * PAGE_SIZE


def _runs(pages: list[int]) -> list[list[int]]:
    """Split sorted page numbers into runs of consecutive pages."""
    runs: list[list[int]] = []
    for p in sorted(pages):
        if runs and runs[-1][-1] == p - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _page_lba(lba: int, ss: int, align: int) -> int:
    """First logical sector of the cache page holding ``lba``."""
    spp = PAGE_SIZE // ss
    origin = align % spp
    return lba - (lba - origin) % spp


def _direct_pages(extents: list[FileExtent], ss: int, align: int) -> Iterator[tuple[int, int]]:
    """(file page, cache page) for every file page that *is* one aligned cache page.

    A file page qualifies when its 4 KiB lie inside one extent and start on a
    cache page boundary; within an extent that holds for all pages or for none.
    """
    spp = PAGE_SIZE // ss
    for e in extents:
        first = -(-e.file_offset // PAGE_SIZE)
        end = (e.file_offset + e.count * ss) // PAGE_SIZE
        if first >= end or (first * PAGE_SIZE - e.file_offset) % ss:
            continue
        lba0 = e.lba + (first * PAGE_SIZE - e.file_offset) // ss
        if _page_lba(lba0, ss, align) != lba0:
            continue
        for k in range(end - first):
            yield first + k, lba0 + k * spp


def _byte_sources(
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
