"""IDE (parallel ATA): PIO through the CPU, or bus-master DMA with its old limits.

* PIO: the CPU moves every sector through the data register. Modelled as a
  ``preadv``/``pwritev`` into a kernel buffer and a counted copy between that
  buffer and the caller's frames (reason ``"pio"``), so ``bytes_copied`` grows
  by exactly the bytes moved. PIO commands here use LBA28: sectors at or
  beyond 2**28 give a typed ``Lba28Limit`` error.
* Bus-master DMA: Physical Region Descriptors address only the first 4 GiB and
  must not cross a 64 KiB boundary, so entries are split there; frames above
  4 GiB go through low-zone bounce frames (counted, reason ``"bounce"``).

Either way there is one command at a time (no queuing on parallel ATA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drivers.base import BlockDriver, DmaPlan, ImagePath
from drivers.errors import BadRequest, DriverConfigError, Lba28Limit
from drivers.protocol import Segment
from drivers.sg import merge_adjacent, require_word_aligned, split_at_boundaries
from microkernel.ipc import Router
from microkernel.memory import PhysicalMemory

LBA28_SECTORS = 1 << 28
PRD_BOUNDARY = 64 << 10
PRD_TABLE_ENTRIES = 8192  # a PRD table may not cross a 64 KiB boundary itself
ATA_MAX_SECTORS = 256  # sector count register: 0 means 256


def build_prd(segments: Sequence[Segment]) -> list[Segment]:
    """PRD entries: word aligned, below 4 GiB, never crossing a 64 KiB boundary."""
    require_word_aligned(segments, "PRD")
    if any(seg.phys + seg.length > 1 << 32 for seg in segments):
        raise BadRequest("PRD: bus-master DMA cannot address memory above 4 GiB")
    table = list(split_at_boundaries(merge_adjacent(segments, PRD_BOUNDARY), PRD_BOUNDARY))
    if len(table) > PRD_TABLE_ENTRIES:
        raise BadRequest(f"{len(table)} PRD entries exceed the table size of {PRD_TABLE_ENTRIES}")
    return table


class IdeDriver(BlockDriver):
    """An IDE channel with one disk, in ``mode="dma"`` (default) or ``mode="pio"``."""

    queue_depth = 1
    max_segments = 128
    default_mode = "dma"

    def __init__(
        self,
        name: str,
        router: Router,
        memory: PhysicalMemory,
        image: ImagePath | None,
        *,
        mode: str | None = None,
        **options: Any,
    ) -> None:
        self.mode = self.default_mode if mode is None else mode
        if self.mode not in ("pio", "dma"):
            raise DriverConfigError(f"IDE mode must be 'pio' or 'dma', not {self.mode!r}")
        self.pio = self.mode == "pio"
        self.dma_bits = 64 if self.pio else 32  # PIO: the CPU reaches every frame
        self.model = "IDE (PIO)" if self.pio else "IDE (bus-master DMA)"
        super().__init__(name, router, memory, image, **options)
        self.max_transfer = ATA_MAX_SECTORS * self.logical_sector_size

    def validate_request(self, lba: int, count: int, sg: Sequence[Segment]) -> int:
        nbytes = super().validate_request(lba, count, sg)
        if self.pio and lba + count > LBA28_SECTORS:
            raise Lba28Limit(
                f"PIO uses LBA28 and reaches sectors below {LBA28_SECTORS}; "
                f"sectors {lba}..{lba + count - 1} need LBA48 (use mode='dma')"
            )
        return nbytes

    def plan_dma(self, sg: Sequence[Segment], plan: DmaPlan, *, write: bool) -> None:
        if self.pio:
            self._plan_pio(sg, plan)
        else:
            plan.views = self.segment_views(build_prd(self.bounce_unreachable(sg, plan)))

    def _plan_pio(self, sg: Sequence[Segment], plan: DmaPlan) -> None:
        """The whole transfer passes through one kernel buffer, segment by segment."""
        targets = self.segment_views(sg)
        buffer = memoryview(bytearray(sum(len(v) for v in targets)))
        plan.views = [buffer]
        plan.reason = "pio"
        offset = 0
        for target in targets:
            plan.staged.append((buffer[offset : offset + len(target)], target))
            offset += len(target)


class IdePioDriver(IdeDriver):
    """IDE in PIO mode (the ``ide-pio`` built-in name)."""

    default_mode = "pio"


class IdeDmaDriver(IdeDriver):
    """IDE with bus-master DMA (the ``ide-dma`` built-in name)."""

    default_mode = "dma"
