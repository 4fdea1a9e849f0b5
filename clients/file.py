"""The user-space file object: what a C library's FILE would be on this system.

Reads and writes touch the process's mapping directly. The library finds the
bytes through the read-only FileMap (an 8-step binary search, no system call),
learns the file size from the read-only state page (one aligned int64 load),
keeps its file position in Python and publishes it to the writable
per-process page before every system call and on close (seek/tell need no
system call), and bumps the per-part counters there (a read adds 1, a write
adds 2). A store also sets the byte of each page it touched in
the window's dirty map, in the same step (``servers/vfs/abi.py``): the kernel
writes back exactly those pages. It makes a system call only on a miss
(``CachePart``), a size change (``SetSize``) or an explicit
flush/fsync/close/fstat.

The hit path of a small read is a handful of loads: the part of the last hit
is remembered with its FileMap slots and re-validated with two loads (size and
position of its entry), and the bytes are sliced out of one read-only view of
the whole data window made at open.

Misses ask for a part sized for throughput: it starts at ``INITIAL_PART`` and
doubles while access stays sequential (readahead), up to ``MAX_PART``.
"""

from __future__ import annotations

import errno
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from microkernel.addrspace import AddressSpace
from servers.fs.protocol import FsInfo
from servers.vfs.abi import (
    DATA_OFFSET,
    FILEMAP_OFFSET,
    PROCPAGE_OFFSET,
    STATE_OFFSET,
    WINDOW_DATA,
    mark_dirty,
)
from servers.vfs.filemap import MAX_PARTS, PARTS_OFFSET, FileMapReader, Words
from servers.vfs.pages import (
    HANDLE_SLOTS,
    POSITIONS_OFFSET,
    STATE_SIZE_OFFSET,
    TOUCH_MAX,
    TOUCH_OFFSET,
    FileStatePage,
    ProcessFilePage,
)
from servers.vfs.protocol import (
    CachePart,
    Close,
    Data,
    Flush,
    Fsync,
    Opened,
    OpenFlags,
    PartReady,
    Read,
    SetSize,
    SetTimes,
    SizeSet,
    StatHandle,
    Write,
    Written,
)

if TYPE_CHECKING:
    from clients.process import UserProcess

INITIAL_PART = 256 * 1024
MAX_PART = 16 * 1024 * 1024  # one CachePart: the kernel maps it as parts of at most 4 MiB
MISS_RETRIES = 8
RESERVE_MIN = 256 * 1024
RESERVE_MAX = 16 * 1024 * 1024  # each reservation is a growth of the chain: one more ordered
# FAT write group (one more device flush) at the next fsync, so they grow big
MAP_AHEAD = 4 * 1024 * 1024  # of the room, mapped by the reserving call (pinned zero frames)


class PastEnd(OSError):
    """A miss beyond the mapped size of the file (or of the caller's reservation)."""


SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
T = TypeVar("T")
_NO_PART = (0, 0, 0, 0, 0)  # (index, first byte, end, size slot, position slot): never hits


class File:
    """An open file of a user process (binary only)."""

    def __init__(
        self, proc: UserProcess, path: str, opened: Opened, flags: OpenFlags, space: AddressSpace
    ) -> None:
        self.proc = proc
        self.name = path
        self.handle = opened.handle
        self.flags = flags
        self.zero_copy = opened.zero_copy
        self._slot = opened.slot
        self._space = space
        self._filemap = FileMapReader(space.view(FILEMAP_OFFSET, 4096))
        self._state = FileStatePage(space.view(STATE_OFFSET, 4096))
        self._page = ProcessFilePage(space.view(PROCPAGE_OFFSET, 4096, writable=True))
        self._part = INITIAL_PART
        self._last_miss_end = -1
        self._reserved = opened.reserved  # a create's first reservation, made by the open
        self._slack = opened.reserved  # the last reservation's room beyond its write: doubled next
        self.closed = False
        # The hit path's own views, made once: the FileMap's entries, the size word, this
        # slot's published position, the touch counters, and the whole data window.
        self._pos = self._page.position(self._slot)  # checks the slot, too
        self._entries = Words(space.view(FILEMAP_OFFSET, 4096))
        self._size_word = space.view(STATE_OFFSET + STATE_SIZE_OFFSET, 8).cast("q")
        self._positions = space.view(
            PROCPAGE_OFFSET + POSITIONS_OFFSET, 8 * HANDLE_SLOTS, writable=True
        ).cast("q")
        touch = space.view(PROCPAGE_OFFSET + TOUCH_OFFSET, 2 * MAX_PARTS, writable=True)
        self._touch = touch.cast("H")
        # Without MAP_FIXED (stitched mode) a view may not span frames: no window-wide view.
        self._data = space.export(DATA_OFFSET, WINDOW_DATA) if space.mode == "map-fixed" else None
        self._last = _NO_PART
        self._viewed = False  # a view was handed out: close waits until it reads zeros

    # ---------------------------------------------------------------- context
    async def __aenter__(self) -> File:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<File {self.name!r} handle={self.handle} pos={self.tell() if not self.closed else '-'}>"

    # --------------------------------------------------------------- positions
    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.name!r}")

    def tell(self) -> int:
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = SEEK_SET) -> int:
        self._check()
        if whence == SEEK_SET:
            position = offset
        elif whence == SEEK_CUR:
            position = self._pos + offset
        elif whence == SEEK_END:
            position = self._size_word[0] + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise OSError(errno.EINVAL, f"{self.name}: negative seek position {position}")
        self._pos = position
        return position

    def _publish(self) -> None:
        """Store the position into the per-process page, where the kernel may look at it.

        Called before every system call and on close; between them the position lives
        in Python, so a hit costs no store for it.
        """
        self._positions[self._slot] = self._pos

    def _moved(self, position: int) -> None:
        """The position after a write: kept, and published at once as before."""
        self._pos = position
        self._positions[self._slot] = position

    async def _call(self, request: msgspec.Struct, reply_type: type[T] | None) -> T:
        """A system call of this file: the position is published first."""
        self._publish()
        return await self.proc.syscall(request, reply_type)

    @property
    def size(self) -> int:
        """The file size from the read-only state page (one load, no system call)."""
        return int(self._size_word[0])

    # ------------------------------------------------------------------ mapping
    def _raw(self, offset: int, length: int, *, writable: bool = False) -> memoryview:
        """The process's own load/store onto file bytes (the FileMap vouched for them).

        Used only for a copy finished before the next await, so it need not be tracked.
        """
        if self._data is not None and not writable:
            return self._data[offset : offset + length]
        return self._space.raw_view(DATA_OFFSET + offset, length, writable=writable)

    async def _miss(self, position: int, want: int) -> None:
        """``CachePart`` for the part around ``position``; readahead grows while sequential."""
        if position == self._last_miss_end:
            self._part = min(self._part * 2, MAX_PART)
        else:
            self._part = INITIAL_PART
        size = max(want, self._part)
        ready: PartReady = await self._call(CachePart(self.handle, position, size), PartReady)
        if ready.size == 0:
            raise PastEnd(errno.EIO, f"{self.name}: byte {position} is past the end of the file")
        self._last_miss_end = ready.position + ready.size

    def _still(self, position: int) -> tuple[int, int]:
        """(part index, bytes available) when the part of the last hit still holds
        ``position``, else (0, 0): two loads instead of a search.

        As safe as a search landing on that entry: a removed part's entry stays
        readable until its grace period ends, then its size is cleared (so this says
        no), and the index is reused only after that (``servers/vfs/filemap.py``).
        """
        index, first, stop, size_slot, position_slot = self._last
        entries = self._entries
        if (
            first <= position < stop
            and entries.i[size_slot] == stop - first
            and entries.q[position_slot] == first
        ):
            return index, stop - position
        return 0, 0

    async def _span(self, position: int, want: int) -> tuple[int, int]:
        """(part index, bytes available from ``position`` in that part), mapping it in if needed."""
        index, avail = self._still(position)
        if index:
            return index, avail
        for _ in range(MISS_RETRIES):
            hit = self._filemap.find(position)
            if hit is not None:
                index, part = hit
                stop = part.position + part.size
                self._last = (
                    index,
                    part.position,
                    stop,
                    (PARTS_OFFSET >> 2) + 4 * index - 2,
                    (PARTS_OFFSET >> 3) + 2 * index - 2,
                )
                return index, stop - position
            await self._miss(position, want)
        raise OSError(errno.EIO, f"{self.name}: part at {position} keeps disappearing")

    def _note_read(self, index: int) -> None:
        """The per-part touch counter the kernel's second chance ages parts by (saturating)."""
        touched = self._touch[index - 1]
        if touched < TOUCH_MAX:
            self._touch[index - 1] = touched + 1

    # -------------------------------------------------------------------- reads
    async def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all to end of file when negative).

        The hit path, for bytes inside the part of the last hit: the size word, two
        loads to re-validate the part, one slice of the window view, the touch counter.
        """
        if self.closed:
            self._check()
        pos = self._pos
        end = self._size_word[0]
        if 0 <= size < end - pos:
            end = pos + size
        if pos >= end:
            return b""
        index, first, stop, size_slot, position_slot = self._last
        data = self._data
        entries = self._entries
        if (
            first <= pos
            and end <= stop
            and data is not None
            and entries.i[size_slot] == stop - first
            and entries.q[position_slot] == first
        ):
            out = data[pos:end].tobytes()
            touch = self._touch
            touched = touch[index - 1]
            if touched < TOUCH_MAX:
                touch[index - 1] = touched + 1
            self._pos = end
            return out
        return await self._read_missed(pos, end)

    async def _read_missed(self, pos: int, end: int) -> bytes:
        """A read that needs a search of the FileMap, several parts, or a system call."""
        if end <= WINDOW_DATA:
            index, avail = await self._span(pos, end - pos)
            if avail >= end - pos:  # one part: one copy, straight out of the mapping
                data = self._raw(pos, end - pos).tobytes()
                self._note_read(index)
                self._pos = end
                return data
        out = bytearray(end - pos)
        await self._copy_out(pos, memoryview(out))
        self._pos = end
        return bytes(out)

    async def readinto(self, buffer: Any) -> int:
        """Read into a writable buffer; returns the byte count."""
        self._check()
        dst = memoryview(buffer).cast("B")
        pos = self._pos
        n = max(0, min(len(dst), self._size_word[0] - pos))
        if n:
            await self._copy_out(pos, dst[:n])
            self._pos = pos + n
        return n

    async def _copy_out(self, pos: int, dst: memoryview) -> None:
        if pos + len(dst) > WINDOW_DATA:
            await self._legacy_read(pos, dst)
            return
        done = 0
        while done < len(dst):
            index, avail = await self._span(pos + done, len(dst) - done)
            n = min(avail, len(dst) - done)
            dst[done : done + n] = self._raw(pos + done, n)
            self._note_read(index)
            done += n

    async def _legacy_read(self, pos: int, dst: memoryview) -> None:
        data: Data = await self._call(Read(self.handle, pos, len(dst)), Data)
        dst[: len(data.data)] = data.data

    async def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A zero-copy, read-only view of file bytes straight onto the mapped frames.

        The pages stay mapped while the process keeps using them; a view kept
        past an eviction reads zeros, never another file's bytes.
        """
        self._check()
        size = self.size
        end = size if length is None else min(size, offset + length)
        if offset < 0 or offset > end:
            raise OSError(errno.EINVAL, f"{self.name}: view {offset}+{length} outside the file")
        for _ in range(MISS_RETRIES):
            pos = offset
            while pos < end:  # map every part of the range (misses may await)
                index, avail = await self._span(pos, end - pos)
                self._note_read(index)
                pos += avail
            if self._covered(offset, end):  # no await since: nothing was evicted meanwhile
                self._viewed = True
                return self._space.export(DATA_OFFSET + offset, end - offset)
        raise OSError(errno.EIO, f"{self.name}: {offset}..{end} cannot stay mapped at once")

    def _covered(self, offset: int, end: int) -> bool:
        pos = offset
        while pos < end:
            hit = self._filemap.find(pos)
            if hit is None:
                return False
            pos = hit[1].position + hit[1].size
        return True

    # ------------------------------------------------------------------- writes
    async def write(self, data: Any) -> int:
        """Write at the position (at the end with append mode), straight into the mapped pages."""
        self._check()
        if not self.flags & OpenFlags.WRITE:
            raise OSError(errno.EBADF, f"{self.name}: not open for writing")
        src = memoryview(data).cast("B")
        pos = self.size if self.flags & OpenFlags.APPEND else self.tell()
        end = pos + len(src)
        if end > WINDOW_DATA:
            written: Written = await self._call(Write(self.handle, pos, bytes(src)), Written)
            self._moved(pos + written.count)
            return written.count
        extending = end > self.size
        if extending and end > self._reserved:
            await self._reserve(end, pos)
        try:
            await self._store(pos, src)
        except PastEnd:  # someone trimmed our reservation (an fsync): reserve again, once
            await self._reserve(end)
            await self._store(pos, src)
        if extending:  # publish: readers see the size only after the data
            await self._set_size(end, write_start=pos)
        self._moved(end)
        return len(src)

    async def _store(self, pos: int, src: memoryview) -> None:
        done = 0
        while done < len(src):
            # a miss inside the reservation maps up to MAP_AHEAD of it: the next writes hit
            ahead = min(self._reserved - pos - done, MAP_AHEAD)
            index, avail = await self._span(pos + done, max(len(src) - done, ahead))
            n = min(avail, len(src) - done)
            self._raw(pos + done, n, writable=True)[:] = src[done : done + n]
            mark_dirty(self._space, pos + done, n)
            self._page.note_write(index)
            done += n

    async def _reserve(self, end: int, start: int = -1) -> None:
        """Room for coming writes, grown geometrically so appends rarely need it.

        Each reservation's room beyond its write is at least double the last
        one's (bounded by ``RESERVE_MAX``): N extending writes cost O(log N)
        reservations up to the bound. The kernel maps the pages from ``start``
        (the write about to be stored) to ``MAP_AHEAD`` into the room in the same
        call, so neither this write nor the next ones there need a ``CachePart``:
        the cache hands reserved pages out as clean zeros, which write nothing
        unless this process stores into them.
        """
        slack = min(max(end - self.size, RESERVE_MIN, 2 * self._slack), RESERVE_MAX)
        mapped = end + min(slack, MAP_AHEAD)
        try:
            await self._call(SetSize(self.handle, end + slack, True, start, mapped), SizeSet)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            slack = 0  # the disk is nearly full: reserve exactly what this write needs
            await self._call(SetSize(self.handle, end, True, start, end), SizeSet)
        self._reserved, self._slack = end + slack, slack

    async def _set_size(self, size: int, *, write_start: int = -1) -> SizeSet:
        result: SizeSet = await self._call(
            SetSize(self.handle, size, write_start=write_start), SizeSet
        )
        if write_start < 0 and size < self._reserved:  # a truncate: the room may be gone
            self._reserved = 0  # (a write's publish keeps it: it is what coming writes use)
        return result

    async def truncate(self, size: int | None = None) -> int:
        self._check()
        size = self.tell() if size is None else size
        await self._set_size(size)
        return size

    async def set_times(self, mtime: float) -> None:
        """Set the modification time (seconds since the epoch), like ``os.utime``."""
        self._check()
        await self._call(SetTimes(self.handle, mtime), FsInfo)

    async def stat(self) -> FsInfo:
        """fstat: the open file's metadata, also after it was renamed or unlinked."""
        self._check()
        info: FsInfo = await self._call(StatHandle(self.handle), FsInfo)
        return info

    async def flush(self) -> None:
        self._check()
        await self._call(Flush(self.handle), None)

    async def fsync(self) -> None:
        self._check()
        await self._call(Fsync(self.handle), None)

    async def close(self) -> None:
        """Close the handle; a read-only one without waiting for the answer.

        A handle that cannot write has no error to report at close (nothing of
        it is written back), so its ``Close`` is posted and the kernel tears the
        window down after this returns. A writable handle waits: close raises
        the error of its final writeback, as Python's files do. So do a handle
        that handed out a view (once close returns, a view kept past it reads
        zeros) and one on the copy path (its private frames, charged to this
        process, are back when close returns).
        """
        if self.closed:
            return
        self.closed = True
        self._publish()
        self._release_views()
        if self.flags & OpenFlags.WRITE or self._viewed or not self.zero_copy:
            await self.proc.syscall(Close(self.handle), None)
        else:
            await self.proc.post(Close(self.handle))

    def _release_views(self) -> None:
        """Drop every view onto the window so the address space can unmap it at close."""
        for obj in (self._filemap, self._state, self._page, self._entries):
            obj.release()
        for view in (self._size_word, self._positions, self._touch):
            view.release()
        if self._data is not None:
            self._data.release()
            self._data = None
