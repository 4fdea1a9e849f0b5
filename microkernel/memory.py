"""Physical memory: one memfd is the machine's RAM, cut into 4 KiB frames.

Why a memfd: the same bytes must be reachable three ways without copying — by a
driver's ``preadv``/``pwritev`` ("DMA"), by the kernel through its own mapping,
and by user processes through ``mmap(MAP_FIXED)`` of individual frames into
their linear address spaces (see :mod:`microkernel.addrspace`).

Physical address map (so that 32-bit DMA limits are real)::

    LOW zone   LOW_BASE (1 MiB) .. LOW_BASE + low_size      below 4 GiB (DMA32)
    HIGH zone  HIGH_BASE (4 GiB) .. HIGH_BASE + high_size   needs 64-bit DMA

A frame's physical address decides which controllers can reach it. Memfd
offsets are dense: low frames first, then high frames.

Every byte of file data the system copies goes through :meth:`PhysicalMemory.copy`
(or :meth:`count_copy` when the copy itself is done by a system call such as a
PIO ``pread`` into a bounce buffer), so ``bytes_copied`` is a measured figure.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import mmap
import os
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from microkernel.stats import Counters
from microkernel.trace import DISABLED, Tracer

PAGE_SIZE = 4096
PAGE_SHIFT = 12
LOW_BASE = 1 << 20
HIGH_BASE = 1 << 32
DMA32_LIMIT = 1 << 32
MADV_POPULATE_WRITE = 23  # Linux 5.14: fault pages in writable, as a first store would
POPULATE_CHUNK = 8 << 20  # one madvise call: how long close() may wait for the populator


def dma32_reserve(low_frames: int) -> int:
    """Low frames a booted system keeps for explicit ``Zone.LOW`` requests (bounce frames):
    1/16 of the low zone, at least 512 (a few commands' worth), at most a quarter."""
    return min(max(low_frames // 16, 512), low_frames // 4)


class Zone(enum.Enum):
    """Where a frame may come from. ``ANY`` prefers high memory to spare the scarce low zone;
    ``PREFER_LOW`` (a 32-bit controller's cache) takes low frames while the owner's share of
    the low zone lasts, then high ones, which the driver bounces."""

    LOW = "low"
    HIGH = "high"
    ANY = "any"
    PREFER_LOW = "prefer-low"


class MemoryError_(OSError):
    """Base of physical-memory errors (named with a trailing underscore to not shadow the builtin)."""


class OutOfFrames(MemoryError_):
    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOMEM, message)


class QuotaExceeded(MemoryError_):
    """The owner's own quota (all frames, or its share of the low zone) is used up: ENOMEM
    for that owner alone, while every other owner keeps allocating."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOMEM, message)


class BadAddress(MemoryError_):
    def __init__(self, message: str) -> None:
        super().__init__(errno.EFAULT, message)


@dataclass(frozen=True, slots=True)
class MemoryStatistics:
    frames_total: int
    frames_free: int
    low_free: int
    high_free: int
    frames_by_owner: dict[str, int]
    low_by_owner: dict[str, int]


def _memfd(size: int) -> tuple[int, bool]:
    """Create the RAM object; fall back to an unlinked temp file where memfd is missing."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("microkernel-ram", getattr(os, "MFD_CLOEXEC", 0))
        shared = True
    else:  # pragma: no cover - non-Linux fallback
        import tempfile

        fd, path = tempfile.mkstemp(prefix="microkernel-ram-")
        os.unlink(path)
        shared = False
    os.ftruncate(fd, size)
    return fd, shared


class PhysicalMemory:
    """The machine's RAM: frames by zone, reference counts, per-owner quotas, one copy function."""

    def __init__(
        self,
        size: int,
        *,
        low_size: int | None = None,
        counters: Counters | None = None,
        populate: bool = False,
        low_reserve: int = 0,
    ) -> None:
        if size < 16 * PAGE_SIZE or size % PAGE_SIZE:
            raise ValueError(f"memory size must be a multiple of 4 KiB and >= 64 KiB, got {size}")
        if low_size is None:
            low_size = min(size // 2, DMA32_LIMIT - LOW_BASE)
        if low_size % PAGE_SIZE or not 0 <= low_size <= size or low_size > DMA32_LIMIT - LOW_BASE:
            raise ValueError(f"low zone size {low_size} does not fit below 4 GiB in {size}")
        self.size = size
        self.low_frames = low_size // PAGE_SIZE
        self.high_frames = (size - low_size) // PAGE_SIZE
        self.frames_total = self.low_frames + self.high_frames
        # Low frames only an explicit Zone.LOW request may take (bounce frames, 32-bit DMA):
        # whoever exhausts the rest of memory, a 32-bit controller can still move data.
        self.low_reserve = low_reserve  # boot sets dma32_reserve(low_frames)
        self.counters = counters if counters is not None else Counters()
        self.tracer: Tracer = DISABLED  # boot sets the system's tracer: copies become events
        self.fd, self.is_memfd = _memfd(size)
        self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._map)
        self._refs = array("i", bytes(4 * self.frames_total))
        # Who holds each frame, as an owner number per frame (0: nobody): one array, no
        # Python object per frame; ``frames_of`` scans it at C speed.
        self._owner = array("I", bytes(4 * self.frames_total))
        self._owner_names: list[str | None] = [None]
        self._owner_ids: dict[str, int] = {}
        # Free stacks: pop() hands out the lowest addresses first, which keeps runs contiguous.
        self._free_low = list(range(self.low_frames - 1, -1, -1))
        self._free_high = list(range(self.frames_total - 1, self.low_frames - 1, -1))
        self._quota: dict[str, int] = {}
        self._low_quota: dict[str, int] = {}
        self._used: dict[str, int] = {}
        self._low_used: dict[str, int] = {}
        self._populator: Populator | None = None
        if populate:
            self._populator = Populator(self._map, self._population_order())

    # ----------------------------------------------------------------- address map
    def phys_of(self, index: int) -> int:
        """Physical address of frame number ``index`` (dense memfd order)."""
        if index < self.low_frames:
            return LOW_BASE + index * PAGE_SIZE
        return HIGH_BASE + (index - self.low_frames) * PAGE_SIZE

    def index_of(self, phys: int) -> int:
        """Frame number of a page-aligned physical address; ``BadAddress`` outside RAM."""
        if phys & (PAGE_SIZE - 1):
            raise BadAddress(f"physical address {phys:#x} is not page aligned")
        if LOW_BASE <= phys < LOW_BASE + self.low_frames * PAGE_SIZE:
            return (phys - LOW_BASE) >> PAGE_SHIFT
        if HIGH_BASE <= phys < HIGH_BASE + self.high_frames * PAGE_SIZE:
            return self.low_frames + ((phys - HIGH_BASE) >> PAGE_SHIFT)
        raise BadAddress(f"physical address {phys:#x} is not RAM")

    def offset_of(self, phys: int) -> int:
        """Byte offset in the memfd of a physical address (any alignment)."""
        page = phys & ~(PAGE_SIZE - 1)
        return self.index_of(page) * PAGE_SIZE + (phys - page)

    # ------------------------------------------------------------------ allocation
    def set_quota(self, owner: str, frames: int | None, *, low: int | None = None) -> None:
        """Limit how many frames ``owner`` may hold, and how many of them low (None: no limit).

        The low limit keeps one owner (the cache of a 32-bit controller, a
        process) from taking the low zone that 32-bit DMA depends on.
        """
        for table, limit in ((self._quota, frames), (self._low_quota, low)):
            if limit is None:
                table.pop(owner, None)
            else:
                table[owner] = limit

    def quota(self, owner: str) -> int | None:
        return self._quota.get(owner)

    def used(self, owner: str) -> int:
        """Frames ``owner`` holds now."""
        return self._used.get(owner, 0)

    def check_quota(self, owner: str, count: int) -> None:
        """Raise ``QuotaExceeded`` (ENOMEM) if ``owner`` may not take ``count`` more frames."""
        limit = self._quota.get(owner)
        used = self._used.get(owner, 0)
        if limit is not None and used + count > limit:
            raise QuotaExceeded(f"{owner} holds {used} frames, quota {limit}, asked {count} more")

    def alloc(self, owner: str, count: int = 1, zone: Zone = Zone.ANY) -> list[int]:
        """Allocate ``count`` frames (refcount 1) for ``owner``; all or nothing.

        ``Zone.ANY`` takes high frames first and low ones only as far as the
        owner's low quota allows.
        """
        if count < 0:
            raise ValueError("negative frame count")
        self.check_quota(owner, count)
        high, low = self._takes(owner, count, zone)
        oid = self._owner_id(owner)
        out = self._pop_run(self._free_high, high, oid) if high else []
        if low:
            out += self._pop_run(self._free_low, low, oid)
            self._low_used[owner] = self._low_used.get(owner, 0) + low
        self._used[owner] = self._used.get(owner, 0) + count
        return out

    def _takes(self, owner: str, count: int, zone: Zone) -> tuple[int, int]:
        """How many high and low frames to take, or ``OutOfFrames``/``QuotaExceeded``."""
        free_low = len(self._free_low)
        if zone is not Zone.LOW:
            free_low = max(0, free_low - self.low_reserve)
        low_room = free_low
        low_limit = self._low_quota.get(owner)
        if low_limit is not None:
            low_room = min(free_low, max(0, low_limit - self._low_used.get(owner, 0)))
        if zone is Zone.PREFER_LOW:
            low = min(count, low_room)
            high = min(count - low, len(self._free_high))
            if high + low == count:
                return high, low
            raise OutOfFrames(f"{count} frames wanted, not enough free")
        high = 0 if zone is Zone.LOW else min(count, len(self._free_high))
        low = 0 if zone is Zone.HIGH else min(count - high, low_room)
        if high + low == count:
            return high, low
        if zone is not Zone.HIGH and high + min(count - high, free_low) == count:
            raise QuotaExceeded(
                f"{owner} holds {self._low_used.get(owner, 0)} low frames, its share of the "
                f"low zone is {low_limit}; {count - high} more wanted"
            )
        raise OutOfFrames(f"{count} frames wanted in zone {zone.value}, not enough free")

    def _owner_id(self, owner: str) -> int:
        """The number standing for ``owner`` in the per-frame owner array."""
        oid = self._owner_ids.get(owner)
        if oid is None:
            oid = self._owner_ids[owner] = len(self._owner_names)
            self._owner_names.append(owner)
        return oid

    def _pop_run(self, stack: list[int], take: int, oid: int) -> list[int]:
        """Pop ``take`` frames off a free stack for ``owner``; their physical addresses.

        The frames are the same, in the same order, as popping them one at a time;
        they are handled a run of consecutive frame numbers at a time (slice
        assignments), so recently freed frames on top of a long free run cost a few
        slice operations, not a Python step per frame.
        """
        refs, owners = self._refs, self._owner
        indices = stack[len(stack) - take :]
        del stack[len(stack) - take :]
        indices.reverse()
        out: list[int] = []
        at = 0
        while at < take:
            first = indices[at]
            n = 1 + _stretch(indices, at, take - at - 1)
            refs[first : first + n] = array("i", [1]) * n
            owners[first : first + n] = array("I", [oid]) * n
            # one stack holds one zone, so the run's addresses are consecutive too
            base = self.phys_of(first)
            out.extend(range(base, base + n * PAGE_SIZE, PAGE_SIZE))
            at += n
        return out

    def charge(self, owner: str, frames: Iterable[int]) -> None:
        """Make ``owner`` the owner of allocated frames (quota-checked, all or nothing).

        For frames a server allocates on a process's behalf (the copy path's
        private pages): the process's quota bounds them, and they come back
        when the process goes (:meth:`release_owner`).
        """
        phys = list(frames)
        indices = [self.index_of(p) for p in phys]
        for index, address in zip(indices, phys, strict=True):
            if self._refs[index] <= 0:
                raise BadAddress(f"frame {address:#x} is not allocated")
        oid = self._owner_id(owner)
        moving = [i for i in set(indices) if self._owner[i] != oid]
        self.check_quota(owner, len(moving))
        low_limit = self._low_quota.get(owner)
        low_moving = sum(1 for i in moving if i < self.low_frames)
        if low_limit is not None and self._low_used.get(owner, 0) + low_moving > low_limit:
            raise QuotaExceeded(f"{owner} may hold {low_limit} low frames; {low_moving} more "
                                f"would exceed its share of the low zone")
        for index in moving:
            self._disown(index)
            self._owner[index] = oid
            self._used[owner] = self._used.get(owner, 0) + 1
            if index < self.low_frames:
                self._low_used[owner] = self._low_used.get(owner, 0) + 1

    def owner_of(self, phys: int) -> str | None:
        return self._owner_names[self._owner[self.index_of(phys)]]

    def _indices_of(self, owner: str) -> list[int]:
        """Frame numbers ``owner`` holds, ascending: a scan of the owner array at C speed."""
        oid = self._owner_ids.get(owner)
        if oid is None or not self._used.get(owner):
            return []
        raw, pattern = self._owner.tobytes(), array("I", [oid]).tobytes()
        out: list[int] = []
        at = raw.find(pattern)
        while at >= 0:
            if at % 4:  # a match straddling two entries: not this owner's
                at = raw.find(pattern, at + 1)
                continue
            out.append(at // 4)
            at = raw.find(pattern, at + 4)
        return out

    def frames_of(self, owner: str) -> list[int]:
        """Physical addresses of every frame ``owner`` holds."""
        return [self.phys_of(i) for i in self._indices_of(owner)]

    def release_owner(self, owner: str) -> int:
        """Free every frame ``owner`` holds, whatever its reference count; returns how many.

        For a process that exited: call it only after every mapping of those
        frames is gone (its address spaces closed), since a freed frame goes
        to the next allocation.
        """
        indices = self._indices_of(owner)
        for index in indices:
            self._refs[index] = 1
        return self.release([self.phys_of(i) for i in indices])

    def forget_owner(self, owner: str) -> int:
        """An owner that went away for good: free what it held and drop its quotas."""
        freed = self.release_owner(owner)
        self.set_quota(owner, None, low=None)
        self._low_used.pop(owner, None)
        return freed

    def _disown(self, index: int) -> None:
        oid = self._owner[index]
        if not oid:
            return
        owner = self._owner_names[oid]
        assert owner is not None
        self._owner[index] = 0
        self._disowned(owner, 1, index < self.low_frames)

    def _disowned(self, owner: str, count: int, low: bool) -> None:
        """``owner`` holds ``count`` frames (all low or all high) fewer."""
        used = self._used[owner] - count
        if used:
            self._used[owner] = used
        else:  # processes come and go: no zero counts left behind
            del self._used[owner]
        if low:
            self._low_used[owner] -= count

    def ref(self, phys: int) -> None:
        """Take one more reference on an allocated frame (a mapping, a pin)."""
        index = self.index_of(phys)
        if self._refs[index] <= 0:
            raise BadAddress(f"frame {phys:#x} is not allocated")
        self._refs[index] += 1

    def release(self, frames: Iterable[int]) -> int:
        """Drop one reference on each frame; frames reaching zero go back to their zone. Returns freed.

        Frames that follow each other (up or down, the cache gives back runs
        highest first) with one reference and one owner are freed a run at a
        time: slice stores on the arrays, the same free-stack order as one by one.
        """
        phys = frames if isinstance(frames, list) else list(frames)
        freed, at, n = 0, 0, len(phys)
        while at < n:
            step = PAGE_SIZE if at + 1 < n and phys[at + 1] > phys[at] else -PAGE_SIZE
            m = 1 + _stretch(phys, at, n - at - 1, step)
            freed += self._release_run(phys, at, m)
            at += m
        return freed

    def _release_run(self, phys: list[int], at: int, m: int) -> int:
        """``release`` of ``phys[at:at+m]``, consecutive addresses going up or down."""
        first, last = self.index_of(phys[at]), self.index_of(phys[at + m - 1])
        lo, hi = min(first, last), max(first, last) + 1
        refs, owners = self._refs, self._owner
        oid = owners[lo]
        if (
            m > 1
            and hi - lo == m
            and refs[lo:hi].count(1) == m
            and oid
            and owners[lo:hi].count(oid) == m
        ):
            refs[lo:hi] = array("i", bytes(4 * m))
            owners[lo:hi] = array("I", bytes(4 * m))
            owner = self._owner_names[oid]
            assert owner is not None
            low = lo < self.low_frames
            self._disowned(owner, m, low)
            stack = self._free_low if low else self._free_high
            stack.extend(range(lo, hi) if first <= last else range(hi - 1, lo - 1, -1))
            return m
        return self._release_each(phys[at : at + m])

    def _release_each(self, frames: list[int]) -> int:
        freed = 0
        for phys in frames:
            index = self.index_of(phys)
            if self._refs[index] <= 0:
                raise BadAddress(f"double free of frame {phys:#x}")
            self._refs[index] -= 1
            if self._refs[index] == 0:
                self._disown(index)
                (self._free_low if index < self.low_frames else self._free_high).append(index)
                freed += 1
        return freed

    def refcount(self, phys: int) -> int:
        return self._refs[self.index_of(phys)]

    @property
    def frames_free(self) -> int:
        return len(self._free_low) + len(self._free_high)

    def statistics(self) -> MemoryStatistics:
        return MemoryStatistics(
            frames_total=self.frames_total,
            frames_free=self.frames_free,
            low_free=len(self._free_low),
            high_free=len(self._free_high),
            frames_by_owner={k: v for k, v in self._used.items() if v},
            low_by_owner={k: v for k, v in self._low_used.items() if v},
        )

    # ------------------------------------------------------------- kernel access
    def view(self, phys: int, length: int = PAGE_SIZE) -> memoryview:
        """Kernel-only writable view of ``length`` bytes at ``phys`` (must stay inside one frame run).

        One view may cover many frames (a physically contiguous run, e.g. a
        scatter/gather segment of several pages): its last byte must be RAM
        and the run must not straddle the hole between the zones.
        """
        start = self.offset_of(phys)
        if length > 1 and self.offset_of(phys + length - 1) != start + length - 1:
            raise BadAddress(
                f"{length} bytes at {phys:#x} are not one contiguous run of physical memory"
            )
        return self._view[start : start + length]

    def zero(self, frames: Iterable[int]) -> None:
        """Zero-fill frames (newly allocated file space); not a data copy."""
        zero = bytes(PAGE_SIZE)
        for phys in frames:
            o = self.index_of(phys) * PAGE_SIZE
            self._view[o : o + PAGE_SIZE] = zero

    # ------------------------------------------------------------------- copying
    def copy(self, dst: memoryview, src: memoryview | bytes, *, reason: str) -> int:
        """The one function through which file data is copied; counted in ``bytes_copied``."""
        n = len(src)
        if len(dst) != n:
            raise ValueError(f"copy of {n} bytes into a {len(dst)}-byte destination ({reason})")
        dst[:] = src
        self.count_copy(n, reason)
        return n

    def count_copy(self, n: int, reason: str) -> None:
        """Account a copy done outside Python (e.g. PIO through a kernel buffer)."""
        self.counters.count_copy(n, reason)
        if self.tracer.enabled:
            self.tracer.copy("memory", reason, n)

    def _population_order(self) -> list[tuple[int, int]]:
        """Memfd byte ranges in the order frames are handed out: high zone first, then low."""
        low_bytes = self.low_frames * PAGE_SIZE
        return [(low_bytes, self.size - low_bytes), (0, low_bytes)]

    def populated(self) -> int:
        """Bytes of RAM faulted in so far by the background populator (0 when it is off)."""
        return 0 if self._populator is None else self._populator.done

    def wait_populated(self) -> int:
        """Block until the populator has finished (or given up); the bytes it faulted in."""
        if self._populator is not None:
            self._populator.join()
        return self.populated()

    def close(self) -> None:
        if self._populator is not None:
            self._populator.stop()
        self._view.release()
        with contextlib.suppress(BufferError):  # a view still exported; closing the fd frees it later
            self._map.close()
        os.close(self.fd)


class Populator:
    """Fault the RAM memfd in on a background thread, so "DMA" lands in warm pages.

    Why: ``preadv`` into memfd pages nobody touched yet costs 5-7 times as much as
    into touched ones, because the host kernel allocates and zeroes each page on
    the first store. Populating at boot moves that cost off every first read.
    ``madvise(MADV_POPULATE_WRITE)`` through ctypes releases the interpreter lock
    (``mmap.madvise`` does not), so boot and the servers run on meanwhile. Where
    the host kernel lacks the advice, the populator stops at once and nothing
    changes: the pages fault in on first use as before.
    """

    def __init__(self, ram: mmap.mmap, ranges: list[tuple[int, int]]) -> None:
        self.done = 0
        self._stopping = threading.Event()
        # Pins the mapping while the thread runs (mmap.close() refuses while it lives).
        self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(ram)
        self._base = ctypes.addressof(self._anchor)
        self._ranges = ranges
        self._thread = threading.Thread(target=self._run, name="ram-populate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            madvise = _libc_madvise()
            for start, length in self._ranges:
                for offset in range(start, start + length, POPULATE_CHUNK):
                    if self._stopping.is_set() or madvise is None:
                        return
                    size = min(POPULATE_CHUNK, start + length - offset)
                    if madvise(ctypes.c_void_p(self._base + offset), size, MADV_POPULATE_WRITE):
                        return  # EINVAL on kernels without the advice: leave it to first use
                    self.done += size
        finally:
            self._anchor = None

    def join(self) -> None:
        self._thread.join()

    def stop(self) -> None:
        """Stop after the chunk in progress and release the mapping (close() may follow)."""
        self._stopping.set()
        self._thread.join()


def _libc_madvise() -> ctypes._NamedFuncPointer | None:
    """libc's madvise from the running process's own symbols (no library search)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - not a glibc/musl Linux
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def _stretch(numbers: list[int], at: int, most: int, by: int = 1) -> int:
    """How many entries after ``numbers[at]`` go on counting by ``by`` (at most ``most``).

    Galloping slice compares against ranges (in C): O(log n) compares per run.
    """
    first, done, step = numbers[at], 0, 8
    if most > 8 and numbers[at + most] == first + by * most and numbers[
        at + 1 : at + 1 + most
    ] == list(range(first + by, first + by * (1 + most), by)):
        return most  # all of it (a whole run freed or taken at once): one compare
    while step and done < most:
        k = min(step, most - done)
        if numbers[at + 1 + done : at + 1 + done + k] == list(
            range(first + by * (1 + done), first + by * (1 + done + k), by)
        ):
            done += k
            step *= 2
        else:
            step //= 2
    return done
