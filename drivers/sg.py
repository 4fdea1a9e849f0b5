"""Pure scatter/gather helpers shared by the controller models (no I/O, no awaits).

A controller describes a transfer as a table of (address, byte count) entries
with its own rules: AHCI merges adjacent memory and caps each entry at 4 MiB,
IDE bus-master DMA must not cross a 64 KiB boundary, both need even counts.
Keeping those rules as small pure functions lets them be tested on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from drivers.errors import BadRequest
from drivers.protocol import Segment


def require_word_aligned(segments: Iterable[Segment], what: str) -> None:
    """Reject odd addresses or byte counts: the controller moves 16-bit words."""
    for i, seg in enumerate(segments):
        if seg.phys & 1 or seg.length & 1:
            raise BadRequest(
                f"{what}: segment {i} ({seg.phys:#x}, {seg.length} bytes) is not word aligned"
            )


def merge_adjacent(segments: Iterable[Segment], limit: int) -> list[Segment]:
    """Join segments that continue each other in physical memory, up to ``limit`` bytes each."""
    out: list[Segment] = []
    for seg in segments:
        if out and out[-1].phys + out[-1].length == seg.phys:
            room = limit - out[-1].length
            if room > 0:
                take = min(room, seg.length)
                out[-1] = Segment(out[-1].phys, out[-1].length + take)
                seg = Segment(seg.phys + take, seg.length - take)
        out.extend(split_by_length([seg], limit) if seg.length else [])
    return out


def merge_contiguous(segments: Sequence[Segment]) -> Sequence[Segment]:
    """Join segments that continue each other in physical memory, without a size limit.

    Returns ``segments`` itself when nothing joins (the usual scattered case costs no copies).
    """
    out: list[Segment] = []
    start = end = -1
    for seg in segments:
        if seg.phys == end:
            end += seg.length
            continue
        if end >= 0:
            out.append(Segment(start, end - start))
        start, end = seg.phys, seg.phys + seg.length
    if end >= 0:
        out.append(Segment(start, end - start))
    return segments if len(out) == len(segments) else out


def split_by_length(segments: Iterable[Segment], limit: int) -> Iterator[Segment]:
    """Cut segments into pieces of at most ``limit`` bytes."""
    for seg in segments:
        for start in range(seg.phys, seg.phys + seg.length, limit):
            yield Segment(start, min(limit, seg.phys + seg.length - start))


def split_at_boundaries(segments: Iterable[Segment], boundary: int) -> Iterator[Segment]:
    """Cut segments so that no piece crosses a multiple of ``boundary`` (a power of two)."""
    for seg in segments:
        addr, end = seg.phys, seg.phys + seg.length
        while addr < end:
            stop = min(end, (addr // boundary + 1) * boundary)
            yield Segment(addr, stop - addr)
            addr = stop


def total_length(segments: Iterable[Segment]) -> int:
    return sum(seg.length for seg in segments)
