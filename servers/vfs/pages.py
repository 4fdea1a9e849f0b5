"""The two other per-file control pages: the file state page and the per-process file page.

**File state page** (one per open file, shared by every process that has it open,
mapped read-only). The kernel publishes the file's metadata through a sequence lock: it
makes ``seq`` odd, writes the fields, makes ``seq`` even again. A reader copies the fields
between two reads of ``seq`` and keeps the copy only when both are the same even value,
so it gets a consistent (size, allocated, name, ...) without a lock or a system call::

    offset  size  type      field
    ------  ----  --------  ----------------------------------------------------------
         0     4  uint32    seq          odd while the kernel writes; +2 per update
         4     4  uint32    attributes   FAT attribute bits (widened)
         8     8  int64     size         file size in bytes
        16     8  int64     allocated    bytes of allocated clusters
        24     8  int64     mtime_ns     modification time, ns since the epoch
        32     2  uint16    name_length  bytes of ``name`` in use
        34    30  -         reserved     zero
        64  1024  uint8[]   name         UTF-8, at most NAME_MAX bytes
      1088  3008  -         reserved     zero

**Per-process file page** (one per process and open file, writable by the process).
The kernel reads (and resets) the counters; the process owns the rest::

    offset  size  type          field
    ------  ----  ------------  --------------------------------------------------------
         0     4  uint32        lock       spinlock word: 0 free, else the owner's id
         4    60  -             reserved   zero
        64   512  int64[64]     position   current file position of each handle slot
       576   448  uint16[224]   touch      per FileMap part index i at [i - 1]: a read adds
                                           1, a write adds 2, saturating at 65535
      1024   224  uint8[224]    dirty      per part index: 1 once the process wrote to it
      1248  2848  -             reserved   zero

All fields are little-endian and naturally aligned; every access goes through a
``memoryview.cast`` view built once per page object, so a hot path (``note_read``,
``size``) costs one item access and no object churn.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, NamedTuple

from servers.vfs.filemap import MAX_PARTS

if TYPE_CHECKING:
    from typing_extensions import Buffer

if sys.byteorder != "little":  # pragma: no cover - the project targets x86-64/aarch64
    raise ImportError(
        "servers.vfs.pages uses native memoryview casts and needs a little-endian host"
    )

PAGE_SIZE: Final = 4096

# File state page.
STATE_SEQ_OFFSET: Final = 0
STATE_FIELDS_OFFSET: Final = 4
STATE_FIELDS_FORMAT: Final = "<IqqqH"  # attributes, size, allocated, mtime_ns, name_length
STATE_SIZE_OFFSET: Final = STATE_FIELDS_OFFSET + 4  # the int64 size alone, naturally aligned
STATE_NAME_OFFSET: Final = 64
NAME_MAX: Final = 1024
STATE_READ_ATTEMPTS: Final = 100_000
_SPINS_BEFORE_YIELD: Final = 64
_STATE_FIELDS: Final = struct.Struct(STATE_FIELDS_FORMAT)
_SEQ_MASK: Final = 0xFFFF_FFFF

# Per-process file page.
LOCK_OFFSET: Final = 0
POSITIONS_OFFSET: Final = 64
HANDLE_SLOTS: Final = 64
TOUCH_OFFSET: Final = 576
DIRTY_OFFSET: Final = 1024
TOUCH_MAX: Final = 0xFFFF
TOUCH_READ: Final = 1
TOUCH_WRITE: Final = 2

assert STATE_FIELDS_OFFSET + _STATE_FIELDS.size <= STATE_NAME_OFFSET
assert STATE_SIZE_OFFSET % 8 == 0
assert STATE_NAME_OFFSET + NAME_MAX <= PAGE_SIZE
assert POSITIONS_OFFSET + 8 * HANDLE_SLOTS == TOUCH_OFFSET
assert TOUCH_OFFSET + 2 * MAX_PARTS == DIRTY_OFFSET
assert DIRTY_OFFSET + MAX_PARTS <= PAGE_SIZE


class PageError(OSError):
    """Base of the control-page errors; an OSError so it crosses IPC as an errno."""


class StateUnstable(PageError):
    """The file state never showed a stable even sequence number: a writer died mid-update."""


class FileState(NamedTuple):
    """A consistent snapshot of the file state page."""

    size: int
    allocated: int
    attributes: int
    mtime_ns: int
    name: str


class PartUsage(NamedTuple):
    """What a process did with one part since the last scan."""

    touch: int
    dirty: bool


def _page_view(buf: Buffer, *, writable: bool) -> memoryview:
    """A byte view of exactly one page, refusing a read-only buffer where we must write."""
    raw = memoryview(buf).cast("B")
    size = raw.nbytes
    if size != PAGE_SIZE:
        raw.release()
        raise PageError(errno.EINVAL, f"a control page is {PAGE_SIZE} bytes, got {size}")
    if writable and raw.readonly:
        raw.release()
        raise PageError(errno.EROFS, "this side of the page needs write access")
    return raw


def _encode_name(name: str) -> bytes:
    """UTF-8 bytes of the name, bounded by the page's name field."""
    data = name.encode("utf-8")
    if len(data) > NAME_MAX:
        raise PageError(
            errno.ENAMETOOLONG, f"name is {len(data)} bytes of UTF-8, at most {NAME_MAX}"
        )
    return data


class FileStatePage:
    """Typed access to a file state page; the kernel writes, processes read."""

    __slots__ = ("_raw", "_seq", "_size")

    def __init__(self, buf: Buffer, *, writable: bool = False) -> None:
        self._raw = _page_view(buf, writable=writable)
        self._seq = self._raw[:4].cast("I")
        self._size = self._raw[STATE_SIZE_OFFSET : STATE_SIZE_OFFSET + 8].cast("q")

    def write(self, state: FileState) -> None:
        """Kernel side: publish a new state; ``seq`` is odd for exactly the duration."""
        name = _encode_name(state.name)
        fields = _STATE_FIELDS.pack(
            state.attributes, state.size, state.allocated, state.mtime_ns, len(name)
        )
        odd = self._seq[0] | 1  # an odd seq tells readers a write is in progress
        self._seq[0] = odd
        self._raw[STATE_FIELDS_OFFSET : STATE_FIELDS_OFFSET + len(fields)] = fields
        self._raw[STATE_NAME_OFFSET : STATE_NAME_OFFSET + len(name)] = name
        self._seq[0] = (odd + 1) & _SEQ_MASK  # even again, one generation later

    def read(self, *, attempts: int = STATE_READ_ATTEMPTS) -> FileState:
        """User side: a consistent snapshot, retrying while the kernel is mid-update."""
        for attempt in range(attempts):
            snapshot = self._try_read()
            if snapshot is not None:
                return snapshot
            if attempt >= _SPINS_BEFORE_YIELD:
                os.sched_yield()  # the writer may be another process waiting for our CPU
        raise StateUnstable(errno.EAGAIN, f"file state still changing after {attempts} attempts")

    def _try_read(self) -> FileState | None:
        """One seqlock attempt: None if the sequence was odd or moved meanwhile."""
        before = self._seq[0]
        if before & 1:
            return None
        attributes, size, allocated, mtime_ns, length = _STATE_FIELDS.unpack_from(
            self._raw, STATE_FIELDS_OFFSET
        )
        raw_name = bytes(self._raw[STATE_NAME_OFFSET : STATE_NAME_OFFSET + min(length, NAME_MAX)])
        if self._seq[0] != before:
            return None
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise PageError(errno.EUCLEAN, "file state name is not valid UTF-8") from None
        return FileState(size, allocated, attributes, mtime_ns, name)

    @property
    def size(self) -> int:
        """The file size alone: one aligned int64 load, consistent without the seqlock."""
        return int(self._size[0])

    @property
    def seq(self) -> int:
        """The current sequence number (odd while the kernel writes)."""
        return int(self._seq[0])

    def release(self) -> None:
        """Drop the views so the underlying mmap can be closed."""
        for view in (self._seq, self._size, self._raw):
            view.release()


def write_state(buf: Buffer, state: FileState) -> None:
    """Kernel side, one shot: publish ``state`` into a file state page."""
    page = FileStatePage(buf, writable=True)
    try:
        page.write(state)
    finally:
        page.release()


def read_state(buf: Buffer, *, attempts: int = STATE_READ_ATTEMPTS) -> FileState:
    """User side, one shot: a consistent snapshot of a file state page."""
    page = FileStatePage(buf)
    try:
        return page.read(attempts=attempts)
    finally:
        page.release()


def _check_index(index: int) -> int:
    """Array slot of a 1-based FileMap part index."""
    if not 0 < index <= MAX_PARTS:
        raise PageError(errno.EINVAL, f"part index {index} is not in 1..{MAX_PARTS}")
    return index - 1


def _check_handle(handle: int) -> int:
    """Validate a handle slot number."""
    if not 0 <= handle < HANDLE_SLOTS:
        raise PageError(errno.EBADF, f"handle slot {handle} is not in 0..{HANDLE_SLOTS - 1}")
    return handle


class ProcessFilePage:
    """Typed access to a per-process file page.

    The lock word is claimed with a check-then-store that never awaits: every task of a
    modelled process runs on one event-loop thread, so nothing can run between the check
    and the store. It guards multi-step updates of the process's own fields across awaits
    (say, a read that must wait for ``CachePart`` before advancing the position).
    """

    __slots__ = ("_dirty", "_lock", "_positions", "_raw", "_touch")

    def __init__(self, buf: Buffer, *, writable: bool = True) -> None:
        self._raw = _page_view(buf, writable=writable)
        self._lock = self._raw[LOCK_OFFSET : LOCK_OFFSET + 4].cast("I")
        self._positions = self._raw[POSITIONS_OFFSET:TOUCH_OFFSET].cast("q")
        self._touch = self._raw[TOUCH_OFFSET:DIRTY_OFFSET].cast("H")
        self._dirty = self._raw[DIRTY_OFFSET : DIRTY_OFFSET + MAX_PARTS]

    # -- the spinlock word

    def try_lock(self, owner: int) -> bool:
        """Claim the lock for ``owner`` (non-zero) if it is free; True on success."""
        if not 0 < owner <= 0xFFFF_FFFF:
            raise PageError(errno.EINVAL, f"lock owner {owner} must be a non-zero uint32")
        if self._lock[0]:
            return False
        self._lock[0] = owner
        return True

    def unlock(self, owner: int) -> None:
        """Release a lock ``owner`` holds."""
        if self._lock[0] != owner:
            raise PageError(errno.EPERM, f"lock is held by {self._lock[0]}, not {owner}")
        self._lock[0] = 0

    @property
    def lock_owner(self) -> int:
        """Current holder of the lock word, 0 when free."""
        return int(self._lock[0])

    # -- file positions (seek/tell without a syscall)

    def position(self, handle: int) -> int:
        """Current file position of a handle slot."""
        return int(self._positions[_check_handle(handle)])

    def set_position(self, handle: int, position: int) -> None:
        """Move a handle slot's file position."""
        if position < 0:
            raise PageError(errno.EINVAL, f"file position {position} is negative")
        self._positions[_check_handle(handle)] = position

    # -- process side of the counters

    def note_read(self, index: int) -> None:
        """The process read from part ``index``: its touch counter goes up by 1."""
        slot = _check_index(index)
        self._touch[slot] = min(self._touch[slot] + TOUCH_READ, TOUCH_MAX)

    def note_write(self, index: int) -> None:
        """The process wrote into part ``index``: touch goes up by 2 and it is dirty."""
        slot = _check_index(index)
        self._touch[slot] = min(self._touch[slot] + TOUCH_WRITE, TOUCH_MAX)
        self._dirty[slot] = 1

    # -- kernel side of the counters

    def touch(self, index: int) -> int:
        """Touch counter of part ``index`` (not reset)."""
        return int(self._touch[_check_index(index)])

    def is_dirty(self, index: int) -> bool:
        """Whether part ``index`` was written since its dirty flag was last taken."""
        return bool(self._dirty[_check_index(index)])

    def take_usage(self, indexes: Iterable[int]) -> dict[int, PartUsage]:
        """Read and zero the touch counters of ``indexes``; report their dirty flags.

        Each counter is read and zeroed in two back-to-back stores, so at most an
        increment racing between them is lost: harmless for an ageing heuristic. Dirty
        flags stay set: only ``take_dirty`` (at writeback) may clear them.
        """
        usage: dict[int, PartUsage] = {}
        for index in indexes:
            slot = _check_index(index)
            touched = int(self._touch[slot])
            self._touch[slot] = 0
            usage[index] = PartUsage(touched, bool(self._dirty[slot]))
        return usage

    def take_dirty(self, index: int) -> bool:
        """Read and clear part ``index``'s dirty flag, just before writing it back.

        Clearing before the writeback means a write racing with it sets the flag again
        and is written next time, instead of being forgotten.
        """
        slot = _check_index(index)
        dirty = bool(self._dirty[slot])
        self._dirty[slot] = 0
        return dirty

    def reset_part(self, index: int) -> None:
        """Zero a part index's counters when the kernel (re)assigns it to a new part."""
        slot = _check_index(index)
        self._touch[slot] = 0
        self._dirty[slot] = 0

    def release(self) -> None:
        """Drop the views so the underlying mmap can be closed."""
        for view in (self._lock, self._positions, self._touch, self._dirty, self._raw):
            view.release()
