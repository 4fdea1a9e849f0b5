"""A memory-backed disk for tests.

The disk's bytes live in their own memfd (the "device memory"), so the DMA
path is exactly the file drivers' ``preadv``/``pwritev`` and nothing is
counted as a copy: moving sectors between a device and RAM is DMA, not a
copy of file data by the CPU. Loading an image at construction is likewise
the device's content, not file data passing through the system.

``image=None`` with ``size=`` gives a zero-filled disk. With an image, its
bytes are loaded once. With ``write_back=True`` every ``Flush`` and the clean
shutdown write the changed 1 MiB chunks back to the image (the command line
asks for that whenever a command writes); without it the image is never
written, and a shutdown that discards written sectors says so in the log
rather than losing them silently.
"""

from __future__ import annotations

import os
from typing import Any

from drivers.base import BlockDriver, ImagePath
from drivers.errors import DriverConfigError
from microkernel.ipc import Router
from microkernel.memory import PhysicalMemory
from microkernel.trace import log

_CHUNK = 1 << 20


class RamDisk(BlockDriver):
    """Memory-backed block device; deep queue, 64-bit "DMA", no controller quirks."""

    model = "ramdisk"
    dma_bits = 64
    max_transfer = 4 << 20
    queue_depth = 32
    max_segments = 1024

    def __init__(
        self,
        name: str,
        router: Router,
        memory: PhysicalMemory,
        image: ImagePath | None = None,
        *,
        write_back: bool = False,
        **options: Any,
    ) -> None:
        self.write_back = write_back
        self._dirty: set[int] = set()  # 1 MiB chunks written since the last write-back
        self.discarded = 0  # chunks a shutdown without write_back threw away
        super().__init__(name, router, memory, image, **options)

    def open_backing(self, image: str | None, size: int | None, read_only: bool) -> tuple[int, int]:
        """A fresh memfd holding ``size`` bytes (default: the image's size), preloaded from the image."""
        image_bytes = 0 if image is None else os.stat(image).st_size
        disk_bytes = image_bytes if size is None else size
        if disk_bytes <= 0:
            raise DriverConfigError("a ramdisk needs size= (bytes) or a non-empty image")
        fd = os.memfd_create(f"ramdisk-{os.path.basename(image or 'anon')}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, disk_bytes)
            if image is not None:
                _load(image, fd, min(image_bytes, disk_bytes))
        except BaseException:
            os.close(fd)
            raise
        return fd, disk_bytes

    def _account(self, lba: int, count: int, nbytes: int, write: bool) -> None:
        super()._account(lba, count, nbytes, write)
        if write:
            start = lba * self.logical_sector_size
            self._dirty.update(range(start // _CHUNK, (start + nbytes - 1) // _CHUNK + 1))

    def flush_backing(self) -> None:
        """Persist the changed chunks to the image, only when asked to (``write_back=True``).

        Runs in a worker thread: the set is swapped first, so a write accounted
        meanwhile is kept for the next flush instead of being lost.
        """
        if not self.write_back or self.image is None or self.read_only or not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        limit = min(os.stat(self.image).st_size, self.total_sectors * self.logical_sector_size)
        _write_chunks(self.image, self.fd, sorted(dirty), limit)

    async def teardown(self) -> None:
        await super().teardown()
        if self._dirty and self.image is not None and not self.write_back:
            self.discarded = len(self._dirty)
            log.warning(
                "ramdisk writes discarded: the image is unchanged (write_back=False)",
                device=self.name,
                image=self.image,
                chunks_of_1MiB=self.discarded,
            )


def _write_chunks(image: str, memfd: int, chunks: list[int], limit: int) -> None:
    """Copy the given 1 MiB chunks of the memfd into the image, then fsync it."""
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for chunk in chunks:
            offset = chunk * _CHUNK
            if offset < limit:
                os.pwrite(fd, os.pread(memfd, min(_CHUNK, limit - offset), offset), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(image: str, memfd: int, nbytes: int) -> None:
    """Fill the ramdisk's memfd with the image's first ``nbytes``, in 1 MiB chunks."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for offset in range(0, nbytes, _CHUNK):
            os.pwrite(memfd, os.pread(fd, min(_CHUNK, nbytes - offset), offset), offset)
    finally:
        os.close(fd)
