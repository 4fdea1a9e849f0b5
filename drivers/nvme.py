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


def prp_entries(sg: Sequence[Segment]) -> list[int]:
    """The page addresses of a transfer, validated against the PRP rules."""
    entries: list[int] = []
    last = len(sg) - 1
    for i, seg in enumerate(sg):
        offset = seg.phys % PAGE_SIZE
        if seg.phys % 4:
            raise BadRequest(f"PRP: segment {i} at {seg.phys:#x} is not dword aligned")
        if i > 0 and offset:
            raise BadRequest(f"PRP: segment {i} at {seg.phys:#x} must start on a page boundary")
        if i < last and (offset + seg.length) % PAGE_SIZE:
            raise BadRequest(
                f"PRP: segment {i} must end on a page boundary (only the last may not)"
            )
        entries.extend(_pages_of(seg))
    return entries


def _pages_of(seg: Segment) -> list[int]:
    """The first address of the segment, then every page boundary inside it."""
    first_page_end = (seg.phys // PAGE_SIZE + 1) * PAGE_SIZE
    return [seg.phys, *range(first_page_end, seg.phys + seg.length, PAGE_SIZE)]


def prp_views(memory: PhysicalMemory, prp1: int, prp2: int, nbytes: int) -> list[memoryview]:
    """Walk PRP1, PRP2 and (when needed) the PRP list as a controller does."""
    first = min(nbytes, PAGE_SIZE - prp1 % PAGE_SIZE)
    views = [memory.view(prp1, first)]
    rest = nbytes - first
    if rest <= 0:
        return views
    pages = -(-rest // PAGE_SIZE)
    if pages == 1:
        addresses: Sequence[int] = [prp2]
    else:
        addresses = struct.unpack_from(f"<{pages}Q", memory.view(prp2, 8 * pages))
    for address in addresses:
        take = min(PAGE_SIZE, rest)
        views.append(memory.view(address, take))
        rest -= take
    return views


class NvmeDriver(BlockDriver):
    """An NVMe controller with one deep I/O queue."""

    model = "NVMe"
    dma_bits = 64
    max_transfer = MAX_TRANSFER
    queue_depth = 64
    max_segments = MAX_TRANSFER // PAGE_SIZE + 1

    def plan_dma(self, sg: Sequence[Segment], plan: DmaPlan, *, write: bool) -> None:
        entries = prp_entries(sg)
        nbytes = sum(seg.length for seg in sg)
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
