"""The block-device protocol every driver server speaks.

Requests carry sector numbers and a scatter/gather list of physical memory
segments, never data: the driver "DMAs" straight into (or out of) those frames
with ``preadv``/``pwritev``. The completion is the reply to the call (``IoDone``),
so completions may arrive out of order when a driver handles commands
concurrently (NVMe, AHCI). Failures are error replies with an errno (EIO for a
medium error, EINVAL for a malformed request, ERANGE/EINVAL for out-of-range).
"""

from __future__ import annotations

import msgspec


class Segment(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One scatter/gather entry: ``length`` bytes at physical address ``phys``."""

    phys: int
    length: int


class Partition(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An MBR partition: first logical sector, number of sectors, partition type byte."""

    index: int
    start: int
    sectors: int
    type: int
    bootable: bool


class Geometry(msgspec.Struct, frozen=True, gc=False, tag=True):
    """What a driver declares about its disk and controller."""

    model: str
    logical_sector_size: int
    physical_sector_size: int
    alignment_offset: int  # logical sectors before the first physical-sector boundary
    total_sectors: int  # logical sectors
    dma_bits: int  # 32 or 64: frames at or above 2**dma_bits are unreachable by DMA
    max_transfer: int  # bytes per command
    queue_depth: int
    max_segments: int
    partitions: list[Partition] = msgspec.field(default_factory=list)


class Identify(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Ask for the geometry (reply: ``Geometry``)."""


class Read(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Read ``count`` logical sectors from ``lba`` into the segments (reply: ``IoDone``)."""

    lba: int
    count: int
    sg: list[Segment]


class Write(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Write ``count`` logical sectors at ``lba`` from the segments (reply: ``IoDone``)."""

    lba: int
    count: int
    sg: list[Segment]
    fua: bool = False


class Flush(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Make every completed write durable (fsync of the image; reply: ``IoDone``)."""


class IoDone(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Completion of one command."""

    lba: int
    count: int
    status: int = 0


class InjectFault(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Fault injection: fail sector ranges with EIO, add latency, or stop answering."""

    fail_ranges: list[tuple[int, int]] = msgspec.field(default_factory=list)  # (lba, count)
    latency_s: float = 0.0
    hang: bool = False
    fail_writes_only: bool = False


class DriverStats(msgspec.Struct, frozen=True, gc=False, tag=True):
    commands: int
    read_bytes: int
    write_bytes: int
    partial_sector_writes: int
    bounce_bytes: int
    pio_bytes: int
    max_in_flight: int


class GetStats(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Ask for ``DriverStats``."""


# msgspec decodes a tagged union only when its members agree on array_like; the
# requests with list fields are maps, so the field-less ones are maps as well.
BlockRequest = Identify | Read | Write | Flush | InjectFault | GetStats
