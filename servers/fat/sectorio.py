"""The block interface the FAT volume engine runs on, and a plain image-file implementation.

All volume I/O goes through :class:`SectorIO`, coarse-grained (a whole FAT, a whole
directory cluster run, only dirty FAT sectors), so a cache-backed implementation can
carry the metadata through the disc cache.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class SectorIO(Protocol):
    """Logical-sector block access to one volume (LBA 0 = the volume's boot sector).

    ``partition_offset`` is the byte offset of LBA 0 from the start of the whole
    device, so the volume can tell whether its data region is page-aligned on the
    device (and thus whether file pages can map onto whole cache pages).
    """

    sector_size: int
    total_sectors: int
    partition_offset: int

    async def read(self, lba: int, count: int) -> bytes:
        """Read ``count`` whole sectors starting at ``lba``."""
        ...

    async def write(self, lba: int, data: bytes) -> None:
        """Write whole sectors (``len(data)`` is a multiple of ``sector_size``) at ``lba``."""
        ...

    async def flush(self) -> None:
        """Make every completed write durable."""
        ...

    async def barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        """Every write so far reaches the disk before any write issued after this returns.

        ``data``: (lba, count) runs of file data written by others (the kernel file
        driver, into the cache) that must be on the disk first as well.
        """
        ...

    async def discard(self, lba: int, count: int) -> None:
        """These sectors were freed: nothing cached for them needs writing any more."""
        ...

    def begin(self, carry: bool = False) -> None:
        """A new operation starts: its writes follow only what it wrote before a barrier.

        With eager barriers (everything before a barrier is durable when it
        returns) this is nothing; a lazy SectorIO scopes its ordering to the
        operation, so independent operations share write groups.
        """
        ...

    def order_after(self, lba: int, count: int) -> None:
        """The operation's next writes follow whatever is still unwritten in these sectors."""
        ...

    @property
    def write_failure(self) -> str | None:
        """Why ordered metadata writing stopped (a write-out failed), or None."""
        ...

    @property
    def pending_writes(self) -> int:
        """Pages changed but not yet durable in their order (0: everything written out)."""
        ...

    def seal(self) -> None:
        """Unmount queued its last writes: any later write is refused (EIO)."""
        ...


class FileSectorIO:
    """SectorIO over an image file (or block device), optionally at a partition offset.

    Synchronous ``pread``/``pwrite`` under async signatures: image files are local
    and the engine is used by tests and tools; the real system goes through the cache.
    """

    def __init__(self, path: str | os.PathLike[str], *, sector_size: int = 512,
                 partition_start: int = 0, total_sectors: int | None = None,
                 read_only: bool = False) -> None:
        self.sector_size = sector_size
        self.partition_offset = partition_start * sector_size
        self._fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        size = os.fstat(self._fd).st_size or os.lseek(self._fd, 0, os.SEEK_END)
        available = max(0, size - self.partition_offset) // sector_size
        self.total_sectors = available if total_sectors is None else min(total_sectors,
                                                                         available)
        self.reads = 0
        self.writes = 0

    async def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        self.reads += 1
        want = count * self.sector_size
        data = os.pread(self._fd, want, self.partition_offset + lba * self.sector_size)
        if len(data) != want:
            raise OSError(errno.EIO, f"short read at sector {lba}: {len(data)} of {want} bytes")
        return data

    async def write(self, lba: int, data: bytes) -> None:
        if len(data) % self.sector_size:
            raise ValueError(f"write of {len(data)} bytes is not whole {self.sector_size}-byte "
                             "sectors")
        self._check(lba, len(data) // self.sector_size)
        self.writes += 1
        os.pwrite(self._fd, data, self.partition_offset + lba * self.sector_size)

    async def flush(self) -> None:
        os.fsync(self._fd)

    async def barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        """``pwrite`` reaches the image in program order; only a power cut needs ``flush``.

        Tools and tests use this SectorIO on image files, where a crash of the
        program loses nothing already written, so ordering costs no fsync here.
        """

    async def discard(self, lba: int, count: int) -> None:
        """Nothing is cached here."""

    def begin(self, carry: bool = False) -> None:
        """Barriers here are program order: no operation scope to keep."""

    def order_after(self, lba: int, count: int) -> None:
        """Every earlier write is already in the image."""

    @property
    def write_failure(self) -> str | None:
        return None

    @property
    def pending_writes(self) -> int:
        return 0

    def seal(self) -> None:
        """Writes here land in program order: nothing can pass the clean flag."""

    def _check(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self.total_sectors:
            raise OSError(errno.EIO, f"sectors {lba}..{lba + count} beyond device end "
                             f"{self.total_sectors}")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSectorIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
