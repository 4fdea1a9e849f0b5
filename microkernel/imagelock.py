"""One writer per image: ``fcntl`` locks on the image file, shared to read, exclusive to write.

Two systems writing one FAT image cross-link clusters, so every boot (and
with it every command and the FUSE mount) locks each image it serves before a
driver opens it, and holds the lock until the drivers have closed it.

The locks are Linux open-file-description locks (``F_OFD_SETLK``), not the
classic per-process POSIX locks: those vanish when *any* descriptor of the
file in the process is closed (a ramdisk loading its image would drop the
lock), and two boots in one process would not exclude each other.

OFD locks do not report their holder's pid (``F_OFD_GETLK`` answers -1), so a
holder also locks one byte far beyond any real image at ``PID_BASE + pid``
in the same mode; a refused locker asks for the first conflicting lock in
that region and reads the pid off its offset. Advisory locks beyond the end
of a file are legal and touch no data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterator

LOCK_BYTE = 0  # the lock proper: byte 0 of the image
PID_BASE = 1 << 62  # holder pid markers: one byte at PID_BASE + pid
PID_SPAN = 1 << 32
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid (+ padding)


class ImageInUse(BlockingIOError):
    """Another system holds a conflicting lock on the image (errno EAGAIN)."""

    def __init__(self, image: str, pid: int | None) -> None:
        holder = f" (pid {pid})" if pid else ""
        super().__init__(errno.EAGAIN, f"in use by another microkernel{holder}", image)
        self.pid = pid

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _flock(kind: int, start: int, length: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)


def _set(fd: int, kind: int, start: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(kind, start, 1))


def holder_pid(fd: int, *, writing: bool) -> int | None:
    """The pid of one system whose lock conflicts with ours, when it left its marker."""
    kind = fcntl.F_WRLCK if writing else fcntl.F_RDLCK
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(kind, PID_BASE, PID_SPAN))
    found, _, start, _, _ = struct.unpack(_FLOCK, answer)
    if found == fcntl.F_UNLCK or not PID_BASE <= start < PID_BASE + PID_SPAN:
        return None
    pid: int = start - PID_BASE
    return pid


def acquire(image: str, *, writing: bool) -> int:
    """Lock ``image``; returns the descriptor that holds the lock (close it to release).

    Raises :class:`ImageInUse` at once, never waits: a second writer is told,
    not queued behind a mount that may last for days.
    """
    fd = os.open(image, (os.O_RDWR if writing else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        kind = fcntl.F_WRLCK if writing else fcntl.F_RDLCK
        try:
            _set(fd, kind, LOCK_BYTE)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ImageInUse(image, holder_pid(fd, writing=writing)) from None
        _set(fd, kind, PID_BASE + os.getpid())
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(images: list[tuple[str, bool]]) -> Iterator[None]:
    """Hold locks on ``(image, writing)`` pairs for the block; all or none are taken.

    An image named twice is locked once, in the strongest mode asked for.
    """
    wanted: dict[str, bool] = {}
    for image, writing in images:
        key = os.path.realpath(image)
        wanted[key] = wanted.get(key, False) or writing
    fds: list[int] = []
    try:
        for image, _ in images:
            key = os.path.realpath(image)
            if key in wanted:
                fds.append(acquire(image, writing=wanted.pop(key)))
        yield
    finally:
        for fd in fds:
            os.close(fd)


__all__ = ["ImageInUse", "acquire", "holder_pid", "locked"]
