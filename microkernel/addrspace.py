"""Linear address spaces: physical frames mapped contiguously with ``mmap(MAP_FIXED)``.

Each process reserves a range of virtual memory (``PROT_NONE``, no backing)
and the kernel maps memfd frames into it page by page with
``mmap(addr, len, prot, MAP_FIXED | MAP_SHARED, memfd, offset)``. A file whose
pages live in scattered frames therefore appears as one contiguous run of
bytes to the process, and both the process and the disc cache see the very
same memory: no copy.

Unmapping puts a ``PROT_NONE`` anonymous mapping back over the range, so the
reservation stays whole and nothing else can land inside it.

Where ``MAP_FIXED`` of a memfd is not possible (not Linux, or a sandbox that
refuses it), :class:`StitchedAddressSpace` keeps one Python ``mmap`` per page;
views that would span two non-adjacent frames are then refused with
``NotContiguous`` and callers fall back to copying. ``AddressSpace.mode`` says
which one is in use, and boot reports it.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import errno
import mmap
import os
import weakref
from collections.abc import Sequence

from microkernel.memory import PAGE_SIZE, BadAddress, PhysicalMemory

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
PROT_NONE = 0
MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class NotContiguous(OSError):
    def __init__(self, message: str) -> None:
        super().__init__(errno.EFAULT, message)


def _mmap(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    result = _libc.mmap(addr, length, prot, flags, fd, offset)
    if result is None or result == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap failed: {os.strerror(err)}")
    return int(result)


def _contiguous_runs(frames: Sequence[int]) -> list[tuple[int, int]]:
    """(first, end) index ranges of physically contiguous frames (one ``mmap`` each).

    Physically contiguous frames of one zone are contiguous in the memfd too. A
    whole contiguous list (the common case for a warm file) is recognised at C speed.
    """
    n = len(frames)
    if not n:
        return []
    first = frames[0]
    if frames[-1] - first == (n - 1) * PAGE_SIZE and list(frames) == list(
        range(first, first + n * PAGE_SIZE, PAGE_SIZE)
    ):
        return [(0, n)]
    out = []
    i = 0
    while i < n:
        base = frames[i]
        j = i + 1
        while j < n and frames[j] == base + (j - i) * PAGE_SIZE:
            j += 1
        out.append((i, j))
        i = j
    return out


class _DeferredUnmap:
    """Unmaps a closed range once the last view exported from it is garbage."""

    def __init__(self, base: int, size: int, views: int) -> None:
        self.base, self.size, self.views = base, size, views

    def drop(self) -> None:
        self.views -= 1
        if self.views == 0:
            _libc.munmap(self.base, self.size)


class AddressSpace:
    """A reserved virtual range of ``size`` bytes whose pages map physical frames."""

    mode = "map-fixed"

    def __init__(self, memory: PhysicalMemory, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"address space size must be a positive multiple of 4 KiB, got {size}")
        self.memory = memory
        self.size = size
        self.base = _mmap(
            None,
            size,
            PROT_NONE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
            -1,
            0,
        )
        # What is mapped, as runs: first page offset -> (pages, physical address of the
        # first); frame k of a run is at that address + k pages. ``_starts`` keeps
        # the firsts sorted (bisect). A 4 MiB part is one entry, not 1024.
        self._runs: dict[int, tuple[int, int]] = {}
        self._starts: list[int] = []
        # Exported views by id (ctypes arrays are weak-referenceable but not hashable).
        self._exports: dict[int, weakref.ref[ctypes.Array[ctypes.c_char]]] = {}
        self._closed = False

    def _check(self, offset: int, length: int) -> None:
        if offset % PAGE_SIZE or offset < 0 or offset + length > self.size:
            raise BadAddress(
                f"range {offset:#x}+{length:#x} outside a {self.size:#x} address space"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise BadAddress("map into a closed address space")

    def map(self, offset: int, frames: Sequence[int], *, writable: bool) -> None:
        """Map ``frames`` (physical addresses) at ``offset``, merging memfd-contiguous runs.

        A closed space refuses: its range may already belong to someone else.
        """
        self._check_open()
        self._check(offset, len(frames) * PAGE_SIZE)
        for i, j in _contiguous_runs(frames):
            self.map_run(offset + i * PAGE_SIZE, j - i, frames[i], writable=writable)

    def map_run(self, offset: int, count: int, phys: int, *, writable: bool) -> None:
        """Map ``count`` physically consecutive frames from ``phys`` at ``offset``: one
        ``mmap(MAP_FIXED)`` and one entry, whatever ``count`` is."""
        self._check_open()
        self._check(offset, count * PAGE_SIZE)
        if count <= 0:
            return
        mem = self.memory
        start = mem.index_of(phys)
        if mem.index_of(phys + (count - 1) * PAGE_SIZE) != start + count - 1:
            raise BadAddress(f"{count} frames from {phys:#x} are not one run of RAM")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        _mmap(
            self.base + offset,
            count * PAGE_SIZE,
            prot,
            MAP_FIXED | mmap.MAP_SHARED,
            mem.fd,
            start * PAGE_SIZE,
        )
        self._cut(offset, offset + count * PAGE_SIZE)
        bisect.insort(self._starts, offset)
        self._runs[offset] = (count, phys)

    def _cut(self, lo: int, hi: int) -> list[int]:
        """Forget what is mapped in bytes ``lo..hi`` (page aligned), splitting runs that
        reach outside; the physical addresses that were mapped there, in offset order."""
        starts, runs = self._starts, self._runs
        i = max(0, bisect.bisect_right(starts, lo) - 1)
        out: list[int] = []
        while i < len(starts) and starts[i] < hi:
            s = starts[i]
            n, phys = runs[s]
            e = s + n * PAGE_SIZE
            if e <= lo:
                i += 1
                continue
            a, b = max(s, lo), min(e, hi)
            out.extend(range(phys + (a - s), phys + (b - s), PAGE_SIZE))
            del runs[s], starts[i]
            if s < a:
                runs[s] = ((a - s) // PAGE_SIZE, phys)
                starts.insert(i, s)
                i += 1
            if b < e:
                runs[b] = ((e - b) // PAGE_SIZE, phys + (b - s))
                starts.insert(i, b)
                i += 1
        return out

    def mapped_frames(self) -> dict[int, int]:
        """Page offset -> physical address of every mapped page (for audits and tests)."""
        return {
            s + k * PAGE_SIZE: phys + k * PAGE_SIZE
            for s in self._starts
            for n, phys in (self._runs[s],)
            for k in range(n)
        }

    def _run_at(self, offset: int) -> tuple[int, int, int] | None:
        """(first offset, pages, first physical address) of the run holding ``offset``."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            return None
        s = self._starts[i]
        n, phys = self._runs[s]
        return (s, n, phys) if offset < s + n * PAGE_SIZE else None

    def unmap(self, offset: int, npages: int, *, discard: bool = False) -> list[int]:
        """Remove the mapping of ``npages`` pages; returns the frames that were mapped there.

        With ``discard`` the pages become private anonymous memory instead of
        ``PROT_NONE``: a view a process kept past the grace period then reads
        zeros (never another file's bytes) and its stores go nowhere, rather
        than faulting the whole model.
        """
        self._check(offset, npages * PAGE_SIZE)
        _mmap(
            self.base + offset,
            npages * PAGE_SIZE,
            (mmap.PROT_READ | mmap.PROT_WRITE) if discard else PROT_NONE,
            MAP_FIXED | mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
            -1,
            0,
        )
        return self._cut(offset, offset + npages * PAGE_SIZE)

    def frame_at(self, offset: int) -> int | None:
        page = offset - offset % PAGE_SIZE
        run = self._run_at(page)
        return None if run is None else run[2] + (page - run[0])

    def is_mapped(self, offset: int, length: int) -> bool:
        """Whether every page of bytes ``offset..offset+length`` is mapped (runs may abut)."""
        at, end = offset - offset % PAGE_SIZE, offset + length
        while at < end:
            run = self._run_at(at)
            if run is None:
                return False
            at = run[0] + run[1] * PAGE_SIZE
        return True

    def view(self, offset: int, length: int, *, writable: bool = False) -> memoryview:
        """A memoryview straight onto the mapped pages (read-only unless ``writable``)."""
        if offset < 0 or offset + length > self.size:
            raise BadAddress(f"view {offset:#x}+{length} outside the address space")
        if not self.is_mapped(offset, length):
            raise BadAddress(f"view {offset:#x}+{length} touches unmapped pages")
        return self.export(offset, length, writable=writable)

    def export(self, offset: int, length: int, *, writable: bool = False) -> memoryview:
        """A view that may outlive a part's mapping: tracked, so :meth:`close` never pulls
        memory out from under it (a ctypes array is weak-referenceable, and every view or
        slice of it keeps it alive)."""
        buf = (ctypes.c_char * length).from_address(self.base + offset)
        key = id(buf)
        exports = self._exports

        def forget(_: object) -> None:
            exports.pop(key, None)

        exports[key] = weakref.ref(buf, forget)
        mv = memoryview(buf).cast("B")
        return mv if writable else mv.toreadonly()

    def raw_view(self, offset: int, length: int, *, writable: bool = False) -> memoryview:
        """An untracked view for a load or store the caller finishes before its next await."""
        buf = (ctypes.c_char * length).from_address(self.base + offset)
        mv = memoryview(buf).cast("B")
        return mv if writable else mv.toreadonly()

    def close(self) -> None:
        """Give the range back. Views still exported keep it reserved, reading zeros."""
        if self._closed:
            return
        self._closed = True
        live = [buf for ref in list(self._exports.values()) if (buf := ref()) is not None]
        if not live:
            _libc.munmap(self.base, self.size)
            self._runs.clear()
            self._starts.clear()
            return
        for first in self._starts:
            _mmap(
                self.base + first,
                self._runs[first][0] * PAGE_SIZE,
                mmap.PROT_READ | mmap.PROT_WRITE,
                MAP_FIXED | mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
                -1,
                0,
            )
        self._runs.clear()
        self._starts.clear()
        release = _DeferredUnmap(self.base, self.size, len(live))
        for buf in live:
            weakref.finalize(buf, release.drop)


class StitchedAddressSpace(AddressSpace):
    """Fallback without MAP_FIXED: per-frame kernel views, contiguous only within memfd runs."""

    mode = "stitched"

    def __init__(self, memory: PhysicalMemory, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"address space size must be a positive multiple of 4 KiB, got {size}")
        self.memory = memory
        self.size = size
        self.base = 0
        self._frames: dict[int, int] = {}  # page offset -> physical address (per page: a fallback)
        self._writable: dict[int, bool] = {}
        self._closed = False

    def map(self, offset: int, frames: Sequence[int], *, writable: bool) -> None:
        self._check_open()
        self._check(offset, len(frames) * PAGE_SIZE)
        for k, phys in enumerate(frames):
            self.memory.index_of(phys)
            self._frames[offset + k * PAGE_SIZE] = phys
            self._writable[offset + k * PAGE_SIZE] = writable

    def map_run(self, offset: int, count: int, phys: int, *, writable: bool) -> None:
        self.map(offset, range(phys, phys + count * PAGE_SIZE, PAGE_SIZE), writable=writable)

    def unmap(self, offset: int, npages: int, *, discard: bool = False) -> list[int]:
        self._check(offset, npages * PAGE_SIZE)
        out = []
        for k in range(npages):
            self._writable.pop(offset + k * PAGE_SIZE, None)
            phys = self._frames.pop(offset + k * PAGE_SIZE, None)
            if phys is not None:
                out.append(phys)
        return out

    def mapped_frames(self) -> dict[int, int]:
        return dict(self._frames)

    def frame_at(self, offset: int) -> int | None:
        return self._frames.get(offset - offset % PAGE_SIZE)

    def is_mapped(self, offset: int, length: int) -> bool:
        first = offset - offset % PAGE_SIZE
        return all(p in self._frames for p in range(first, offset + length, PAGE_SIZE))

    def view(self, offset: int, length: int, *, writable: bool = False) -> memoryview:
        if not self.is_mapped(offset, length):
            raise BadAddress(f"view {offset:#x}+{length} touches unmapped pages")
        first = offset - offset % PAGE_SIZE
        phys0 = self._frames[first]
        for p in range(first, offset + length, PAGE_SIZE):
            if self._frames[p] != phys0 + (p - first) or (writable and not self._writable[p]):
                raise NotContiguous(f"pages at {first:#x}.. are not one frame run in stitched mode")
        mv = self.memory.view(phys0 + offset - first, length)
        return mv if writable else mv.toreadonly()

    def export(self, offset: int, length: int, *, writable: bool = False) -> memoryview:
        return self.view(offset, length, writable=writable)

    def raw_view(self, offset: int, length: int, *, writable: bool = False) -> memoryview:
        return self.view(offset, length, writable=writable)

    def close(self) -> None:
        self._frames.clear()
        self._closed = True


_map_fixed_works: bool | None = None


def make_address_space(memory: PhysicalMemory, size: int) -> AddressSpace:
    """A MAP_FIXED address space when the platform allows it (probed once), else the fallback."""
    global _map_fixed_works
    if memory.is_memfd and _map_fixed_works is not False:
        try:
            space = AddressSpace(memory, size)
        except OSError:
            _map_fixed_works = False
        else:
            if _map_fixed_works is None:
                # Probe with frame 0 read-only: harmless, and needs no free frame.
                try:
                    space.map(0, [memory.phys_of(0)], writable=False)
                    space.unmap(0, 1)
                    _map_fixed_works = True
                except OSError:
                    _map_fixed_works = False
            if _map_fixed_works:
                return space
            space.close()
    return StitchedAddressSpace(memory, size)
