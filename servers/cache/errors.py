"""Typed errors of the disc cache manager.

They are ``KernelError``s registered with the IPC layer, so a caller of
``CacheMap``/``Writeback``/... gets the same class back from its stub, and
plain ``except OSError`` code sees the errno it expects.
"""

from __future__ import annotations

import errno

from microkernel.errors import KernelError, register_error


@register_error
class CacheError(KernelError):
    """Base class of the cache's own failures."""

    default_errno = errno.EIO

    def __init__(
        self, message: str, err: int | None = None, *, released: int = 0, refused: int = 0
    ) -> None:
        super().__init__(message, err)
        # For a partly refused ``Release``: the pins that were dropped, and those that were not.
        self.released = released
        self.refused = refused


@register_error
class IllegalTransition(CacheError):
    """A page was asked to do something its state forbids (a bug or a stale request): EINVAL."""

    default_errno = errno.EINVAL


@register_error
class UnknownPage(CacheError):
    """The request names a page the cache does not hold (never read, or already evicted): EINVAL."""

    default_errno = errno.EINVAL


@register_error
class NoSuchDevice(CacheError):
    """The request names a device the cache was not configured with: ENODEV."""

    default_errno = errno.ENODEV


@register_error
class BadExtent(CacheError):
    """An extent is empty, negative or runs past the end of the device: EINVAL/ERANGE."""

    default_errno = errno.EINVAL


@register_error
class UnsupportedGeometry(CacheError):
    """The driver declared a geometry the cache cannot page (sectors > 4 KiB ...): EINVAL."""

    default_errno = errno.EINVAL


@register_error
class CacheFull(CacheError):
    """No frame could be freed for the request, even after asking the holders: ENOMEM."""

    default_errno = errno.ENOMEM


@register_error
class NotPinHolder(CacheError):
    """A ``Release``/``GiveBackDone`` from a port that does not hold those pins: EPERM.

    Refused with no effect on the pins named (the ones the sender does hold are
    still released) and counted, so one server cannot drop another's pins.
    """

    default_errno = errno.EPERM


@register_error
class DeviceError(CacheError):
    """The driver failed a command; ``errno`` is the driver's (EIO for a medium error)."""

    default_errno = errno.EIO
