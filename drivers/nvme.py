"""NVMe: PRP lists of page addresses, a deep queue, out-of-order completions.

The driver turns a scatter/gather list into Physical Region Page entries the
way an NVMe controller expects them: PRP1 may point into the middle of a page
(dword aligned), every later entry is a page-aligned whole page, only the last
may be short. With more than two entries PRP2 is the address of a PRP list, a
real frame holding little-endian 64-bit entries; the "hardware" then walks
PRP1/PRP2/the list to find its memory, so what is transferred is exactly what
the PRPs say. An sg that PRPs cannot express is rejected with EINVAL.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from drivers.base import BlockDriver, DmaPlan
from drivers.errors import BadRequest
from drivers.protocol import Segment
from microkernel.memory import PAGE_SIZE, PhysicalMemory

MAX_TRANSFER = 1 << 20  # MDTS: 256 pages
LIST_ENTRIES = PAGE_SIZE // 8


_IN_PAGE = PAGE_SIZE - 1


def prp_entries(sg: Sequence[Segment]) -> list[int]:
    """The page addresses of a transfer, validated against the PRP rules."""
    return _prp_entries(sg)[0]


def _prp_entries(sg: Sequence[Segment]) -> tuple[list[int], int]:
    """``prp_entries`` and the transfer's byte count."""
    # The usual transfer: whole, page-aligned frames (the last one may be short).
    # One entry per segment; checked with C-level loops, no per-segment Python.
    lengths = [seg.length for seg in sg]
    entries = [seg.phys for seg in sg]
    if (
        entries
        and not any(map(_IN_PAGE.__and__, entries))
        and lengths.count(PAGE_SIZE) + (lengths[-1] != PAGE_SIZE) == len(lengths)
        and 0 < lengths[-1] <= PAGE_SIZE
    ):
        return entries, sum(lengths)
    entries = []
    last = len(sg) - 1
    for i, seg in enumerate(sg):
        phys, length = seg.phys, seg.length
        offset = phys % PAGE_SIZE
        if phys % 4:
            raise BadRequest(f"PRP: segment {i} at {phys:#x} is not dword aligned")
        if i > 0 and offset:
            raise BadRequest(f"PRP: segment {i} at {phys:#x} must start on a page boundary")
        if i < last and (offset + length) % PAGE_SIZE:
            raise BadRequest(
                f"PRP: segment {i} must end on a page boundary (only the last may not)"
            )
        if offset + length <= PAGE_SIZE:
            entries.append(phys)  # the common case: a segment within one page
        else:
            entries.extend(_pages_of(seg))
    return entries, sum(lengths)


def _pages_of(seg: Segment) -> list[int]:
    """The first address of the segment, then every page boundary inside it."""
    first_page_end = (seg.phys // PAGE_SIZE + 1) * PAGE_SIZE
    return [seg.phys, *range(first_page_end, seg.phys + seg.length, PAGE_SIZE)]


def prp_views(memory: PhysicalMemory, prp1: int, prp2: int, nbytes: int) -> list[memoryview]:
    """Walk PRP1, PRP2 and (when needed) the PRP list as a controller does.

    Entries that continue the previous one in physical memory are reached
    through one view (one iovec for ``preadv``): the bytes are the same, and
    each view is checked to be RAM as a whole.
    """
    first = min(nbytes, PAGE_SIZE - prp1 % PAGE_SIZE)
    rest = nbytes - first
    if rest <= 0:
        return [memory.view(prp1, first)]
    pages = -(-rest // PAGE_SIZE)
    if pages == 1:
        addresses: Sequence[int] = (prp2,)
    else:
        addresses = struct.unpack_from(f"<{pages}Q", memory.view(prp2, 8 * pages))
    return [memory.view(start, length) for start, length in _runs(prp1, first, addresses, rest)]


def _runs(prp1: int, first: int, addresses: Sequence[int], rest: int) -> list[tuple[int, int]]:
    """``(address, bytes)`` of the transfer's physically contiguous runs, in order.

    ``first`` bytes at ``prp1``, then ``rest`` bytes through the page entries
    ``addresses``: whole pages, the last one possibly short.
    """
    start = addresses[0]
    end = start + PAGE_SIZE * len(addresses)
    if tuple(range(start, end, PAGE_SIZE)) == tuple(addresses):  # one run of frames
        if prp1 + first == start:
            return [(prp1, first + rest)]
        return [(prp1, first), (start, rest)]
    runs = [(prp1, first)]
    run_start, run_len = prp1, first
    for address in addresses:
        take = min(PAGE_SIZE, rest)
        rest -= take
        if address == run_start + run_len:
            run_len += take
        else:
            runs[-1] = (run_start, run_len)
            runs.append((address, take))
            run_start, run_len = address, take
    runs[-1] = (run_start, run_len)
    return runs


class NvmeDriver(BlockDriver):
    """An NVMe controller with one deep I/O queue."""

    model = "NVMe"
    dma_bits = 64
    max_transfer = MAX_TRANSFER
    queue_depth = 64
    max_segments = MAX_TRANSFER // PAGE_SIZE + 1

    def plan_dma(self, sg: Sequence[Segment], plan: DmaPlan, *, write: bool) -> None:
        entries, nbytes = _prp_entries(sg)
        prp1, prp2 = entries[0], 0
        if len(entries) == 2:
            prp2 = entries[1]
        elif len(entries) > 2:
            prp2 = self._prp_list(entries[1:], plan)
        plan.views = prp_views(self.memory, prp1, prp2, nbytes)

    def _prp_list(self, entries: list[int], plan: DmaPlan) -> int:
        """Write the entries after PRP1 into a borrowed frame; its address becomes PRP2."""
        if len(entries) > LIST_ENTRIES:
            raise BadRequest(f"{len(entries)} PRP entries do not fit one list page")
        (frame,) = self.memory.alloc(self.name, 1)
        plan.frames.append(frame)
        struct.pack_into(f"<{len(entries)}Q", self.memory.view(frame), 0, *entries)
        return frame
