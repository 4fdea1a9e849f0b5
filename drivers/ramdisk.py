"""A memory-backed disk for tests.

The disk's bytes live in their own memfd (the "device memory"), so the DMA
path is exactly the file drivers' ``preadv``/``pwritev`` and nothing is
counted as a copy: moving sectors between a device and RAM is DMA, not a
copy of file data by the CPU. Loading an image at construction is likewise
the device's content, not file data passing through the system.

``image=None`` with ``size=`` gives a zero-filled disk. With an image, its
bytes are loaded once and the file is never written unless ``write_back=True``
(then ``Flush`` and shutdown write the memory back to the image).
"""

from __future__ import annotations

import os
from typing import Any

from drivers.base import BlockDriver, ImagePath
from drivers.errors import DriverConfigError
from microkernel.ipc import Router
from microkernel.memory import PhysicalMemory

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
                _copy_file(image, fd, min(image_bytes, disk_bytes), to_image=False)
        except BaseException:
            os.close(fd)
            raise
        return fd, disk_bytes

    def flush_backing(self) -> None:
        """Persist to the image only when asked to (``write_back=True``)."""
        if self.write_back and self.image is not None and not self.read_only:
            limit = min(os.stat(self.image).st_size, self.total_sectors * self.logical_sector_size)
            _copy_file(self.image, self.fd, limit, to_image=True)


def _copy_file(image: str, memfd: int, nbytes: int, *, to_image: bool) -> None:
    """Move ``nbytes`` between the image file and the ramdisk's memfd, in 1 MiB chunks."""
    fd = os.open(image, (os.O_RDWR if to_image else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        src, dst = (memfd, fd) if to_image else (fd, memfd)
        for offset in range(0, nbytes, _CHUNK):
            chunk = os.pread(src, min(_CHUNK, nbytes - offset), offset)
            os.pwrite(dst, chunk, offset)
        if to_image:
            os.fsync(fd)
    finally:
        os.close(fd)
