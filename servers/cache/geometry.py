"""Page geometry of a cached device: which logical sectors each 4 KiB cache page holds.

Pure arithmetic, no I/O. Cache pages follow the device's *physical* sectors so
that writeback writes whole physical sectors (docs/architecture.md §4): page ``n`` starts at logical sector ``origin + n * spp`` with
``spp = 4096 // logical_sector_size`` and ``origin = alignment_offset % spp``.

Choice for the edges (documented here because every consumer depends on it):

* **Head page.** When ``origin > 0`` the first ``origin`` sectors lie before
  page 0. They form the head page, named by the *negative* logical sector
  ``origin - spp`` where it would start if the disk extended backwards. Its
  frame is laid out like every other page (byte ``k`` of the frame holds sector
  ``page_lba + k // sector_size``), so a consumer computes offsets with one rule
  for all pages; the bytes of the non-existent sectors read as zero.
* **Tail page.** When the device ends inside a page, the missing sectors of the
  last page read as zero too.

Both edge pages are read and written through a *sub-page* scatter/gather
segment that covers only the sectors that exist (see :meth:`PageGeometry.span`);
since the cache always holds a whole page before it is marked dirty, no
read-modify-write is ever needed at the cache level.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.protocol import Geometry, Segment
from microkernel.memory import PAGE_SIZE
from servers.cache.errors import BadExtent, UnsupportedGeometry
from servers.cache.protocol import Extent


@dataclass(frozen=True, slots=True)
class Span:
    """The on-disk part of a page: ``count`` sectors from ``lba``, at ``offset`` bytes into the frame."""

    lba: int
    count: int
    offset: int


@dataclass(frozen=True, slots=True)
class PageGeometry:
    """Maps logical sectors to cache pages for one device."""

    sector_size: int
    spp: int
    origin: int
    total_sectors: int

    @classmethod
    def from_geometry(cls, geometry: Geometry) -> PageGeometry:
        """Derive the page grid from a driver's ``Geometry`` (rejecting sizes a page cannot hold)."""
        size = geometry.logical_sector_size
        if size <= 0 or size > PAGE_SIZE or PAGE_SIZE % size:
            raise UnsupportedGeometry(
                f"logical sector size {size} does not divide the {PAGE_SIZE}-byte page"
            )
        spp = PAGE_SIZE // size
        return cls(size, spp, geometry.alignment_offset % spp, geometry.total_sectors)

    # ---------------------------------------------------------------- lookups
    def page_of(self, lba: int) -> int:
        """First logical sector (possibly negative, for the head page) of the page holding ``lba``."""
        return self.origin + ((lba - self.origin) // self.spp) * self.spp

    def pages_for(self, lbas: Iterable[int]) -> list[int]:
        """``page_of`` for each sector, in order."""
        origin, spp = self.origin, self.spp
        return [origin + ((lba - origin) // spp) * spp for lba in lbas]

    def page_runs(self, extents: Iterable[Extent]) -> list[tuple[int, int]]:
        """The pages covering the extents as sorted, disjoint runs ``(first page, count)``."""
        spans: list[tuple[int, int]] = []
        for extent in extents:
            self.check(extent)
            spans.append((self.page_of(extent.lba), self.page_of(extent.lba + extent.count - 1)))
        spans.sort()
        spp = self.spp
        out: list[tuple[int, int]] = []
        for first, last in spans:  # merged where they overlap or touch
            if out and first <= out[-1][0] + out[-1][1] * spp:
                end = max(out[-1][0] + out[-1][1] * spp, last + spp)
                out[-1] = (out[-1][0], (end - out[-1][0]) // spp)
            else:
                out.append((first, (last - first) // spp + 1))
        return out

    def runs_for(self, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """``(sector, pages)`` spans as page runs: ``pages`` pages from the page holding ``sector``."""
        return [(self.page_of(lba), n) for lba, n in spans if n > 0]

    def check(self, extent: Extent) -> None:
        """Refuse an empty, negative or past-the-end extent (ERANGE/EINVAL at the boundary)."""
        if extent.count <= 0 or extent.lba < 0:
            raise BadExtent(f"bad extent lba={extent.lba} count={extent.count}", errno.EINVAL)
        if extent.lba + extent.count > self.total_sectors:
            raise BadExtent(
                f"extent {extent.lba}+{extent.count} ends past the device's "
                f"{self.total_sectors} sectors",
                errno.ERANGE,
            )

    def is_page(self, page_lba: int) -> bool:
        """Whether ``page_lba`` names a page of this device (grid-aligned and overlapping the disk)."""
        return (page_lba - self.origin) % self.spp == 0 and self.span(page_lba).count > 0

    def span(self, page_lba: int) -> Span:
        """The sectors of the page that exist on the disk, clipped at both ends."""
        if page_lba >= 0 and page_lba + self.spp <= self.total_sectors:
            return Span(page_lba, self.spp, 0)  # an interior page: the common case
        first = max(page_lba, 0)
        end = min(page_lba + self.spp, self.total_sectors)
        return Span(first, max(end - first, 0), (first - page_lba) * self.sector_size)

    def is_partial(self, page_lba: int) -> bool:
        """Whether the page misses sectors at the disk's edges (``span(page).count != spp``)."""
        return page_lba < 0 or page_lba + self.spp > self.total_sectors

    def whole_pages(self, extents: Sequence[Extent]) -> set[int]:
        """Pages whose every on-disk sector lies inside the extents (their old bytes are moot)."""
        whole: set[int] = set()
        spp = self.spp
        for lba, end in _merged(extents):
            for page in range(self.page_of(lba), self.page_of(end - 1) + 1, spp):
                if not self.is_partial(page):
                    if lba <= page and page + spp <= end:
                        whole.add(page)
                    continue
                span = self.span(page)
                if lba <= span.lba and span.lba + span.count <= end:
                    whole.add(page)
        return whole

    # ---------------------------------------------------------------- commands
    def run_command(self, first: int, count: int, phys: int) -> tuple[int, int, list[Segment]]:
        """One command for ``count`` consecutive pages from ``first`` in consecutive frames from
        ``phys``: (first sector, sectors, one segment; clipped at the disk's edges)."""
        spp = self.spp
        lba = max(first, 0)
        end = min(first + count * spp, self.total_sectors)
        start = phys + (lba - first) * self.sector_size
        return lba, max(end - lba, 0), [Segment(start, (end - lba) * self.sector_size)]

    def parts_command(
        self, parts: Sequence[tuple[int, int, int]]
    ) -> tuple[int, int, list[Segment]]:
        """One command for frame runs ``(first page, count, first frame)`` that follow each
        other on the disk: one segment per run."""
        first = self.run_command(*parts[0])
        sg = list(first[2])
        lba, end = first[0], first[0] + first[1]
        for part in parts[1:]:
            plba, count, segments = self.run_command(*part)
            sg += segments
            end = plba + count
        return lba, end - lba, sg


def _merged(extents: Iterable[Extent]) -> list[tuple[int, int]]:
    """Extents as sorted, disjoint, maximal ``[start, end)`` intervals."""
    out: list[tuple[int, int]] = []
    for lba, end in sorted((e.lba, e.lba + e.count) for e in extents):
        if out and lba <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((lba, end))
    return out


def max_pages_per_command(geometry: Geometry, limit: int | None) -> int:
    """Pages one driver command may carry: the driver's transfer and segment limits, and ours."""
    if geometry.max_transfer < PAGE_SIZE or geometry.max_segments < 1:
        raise UnsupportedGeometry(
            f"driver transfers {geometry.max_transfer} bytes in {geometry.max_segments} "
            "segments per command: less than one page"
        )
    pages = min(geometry.max_transfer // PAGE_SIZE, geometry.max_segments)
    return pages if limit is None else max(1, min(pages, limit))
