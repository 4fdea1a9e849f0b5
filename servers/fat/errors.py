"""Typed errors of the FAT file system.

Every error is an ``OSError`` carrying an errno, so the one IPC boundary can turn it
into an error reply (errno + message) and the caller's stub back into an exception.
Namespace errors also subclass the matching builtin (``FileNotFoundError`` ...), so
ordinary ``except FileNotFoundError`` code works on them.
"""

from __future__ import annotations

import errno


class FatError(OSError):
    """Base class: an explained failure of the FAT layer (``errno`` tells which kind)."""

    default_errno = errno.EIO

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(self.default_errno if err is None else err, message)


class CorruptVolume(FatError):
    """The volume's on-disk structures are damaged (EIO).

    Raised from mount when the boot sector / BPB cannot be trusted (the volume is
    refused), and as the base of the per-file damage errors below.
    """


class BadBootSector(CorruptVolume):
    """The boot sector / BPB fails validation: the volume is refused at mount."""


class TruncatedImage(BadBootSector):
    """The BPB describes more sectors than the device holds."""


class BadChain(CorruptVolume):
    """A cluster chain is cyclic, runs into a free/reserved/out-of-range cluster, or is short."""


class DirectoryLoop(CorruptVolume):
    """A directory's cluster is one of its own ancestors."""


class NoSpace(FatError):
    """The data region (or a fixed FAT12/16 root directory) is full: ENOSPC."""

    default_errno = errno.ENOSPC


class ReadOnlyVolume(FatError):
    """A modification was attempted on a read-only mount: EROFS."""

    default_errno = errno.EROFS


class NotFound(FatError, FileNotFoundError):
    """ENOENT."""

    default_errno = errno.ENOENT


class Stale(FatError):
    """ESTALE: a file id that no longer names an entry (its directory was removed)."""

    default_errno = errno.ESTALE


class AlreadyExists(FatError, FileExistsError):
    """EEXIST."""

    default_errno = errno.EEXIST


class NotADirectory(FatError, NotADirectoryError):
    """ENOTDIR."""

    default_errno = errno.ENOTDIR


class IsADirectory(FatError, IsADirectoryError):
    """EISDIR."""

    default_errno = errno.EISDIR


class DirectoryNotEmpty(FatError):
    """ENOTEMPTY."""

    default_errno = errno.ENOTEMPTY


class NameTooLong(FatError):
    """ENAMETOOLONG: a long name above 255 UTF-16 units."""

    default_errno = errno.ENAMETOOLONG


class InvalidName(FatError):
    """EINVAL: a name with characters FAT cannot store (or '.', '..', empty)."""

    default_errno = errno.EINVAL


class InvalidArgument(FatError):
    """EINVAL for a bad argument (negative size, moving a directory into itself ...)."""

    default_errno = errno.EINVAL


class BadHandle(FatError):
    """EBADF: an unknown or closed file handle."""

    default_errno = errno.EBADF
