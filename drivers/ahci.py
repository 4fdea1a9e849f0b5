"""AHCI (SATA): PRDT entries, 32 command slots, and the 64-bit addressing flag.

Each command's Physical Region Descriptor Table lists (address, byte count)
entries: word aligned, even counts, at most 4 MiB each; memory that continues
the previous entry is merged into it. A controller without S64A (``s64a=False``)
has a 32-bit DMA mask: frames at or above 4 GiB are reached through low-zone
bounce frames, copied and counted (``dma_bounce_bytes``, ``bytes_copied``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drivers.base import BlockDriver, DmaPlan, ImagePath
from drivers.errors import BadRequest
from drivers.protocol import Segment
from drivers.sg import merge_adjacent, require_word_aligned
from microkernel.ipc import Router
from microkernel.memory import PhysicalMemory

PRD_MAX_BYTES = 4 << 20
PRDT_MAX_ENTRIES = 65535


def build_prdt(segments: Sequence[Segment]) -> list[Segment]:
    """PRDT entries (address, byte count) for segments the controller can address."""
    require_word_aligned(segments, "PRDT")
    table = merge_adjacent(segments, PRD_MAX_BYTES)
    if len(table) > PRDT_MAX_ENTRIES:
        raise BadRequest(f"{len(table)} PRDT entries exceed the limit of {PRDT_MAX_ENTRIES}")
    return table


class AhciDriver(BlockDriver):
    """An AHCI port with native command queuing (32 slots)."""

    model = "AHCI SATA"
    max_transfer = 4 << 20
    queue_depth = 32
    max_segments = 168
    default_s64a = True

    def __init__(
        self,
        name: str,
        router: Router,
        memory: PhysicalMemory,
        image: ImagePath | None,
        *,
        s64a: bool | None = None,
        **options: Any,
    ) -> None:
        self.s64a = self.default_s64a if s64a is None else s64a
        self.dma_bits = 64 if self.s64a else 32
        if not self.s64a:
            self.model = "AHCI SATA (32-bit DMA)"
        super().__init__(name, router, memory, image, **options)

    def plan_dma(self, sg: Sequence[Segment], plan: DmaPlan, *, write: bool) -> None:
        require_word_aligned(sg, "PRDT")
        table = build_prdt(self.bounce_unreachable(sg, plan))
        plan.views = self.segment_views(table)


class Ahci32Driver(AhciDriver):
    """An AHCI controller without 64-bit addressing (the ``ahci32`` built-in name)."""

    default_s64a = False
