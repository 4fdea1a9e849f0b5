"""Typed driver errors, registered so that their class survives the trip across IPC.

Each fixes its errno (docs/architecture.md §3: errors cross IPC as data), so a caller can
catch ``OSError`` and look at ``errno`` or catch the class itself.
"""

from __future__ import annotations

import errno

from microkernel.errors import KernelError, register_error


@register_error
class DriverError(KernelError):
    """Base of the block drivers' errors."""

    default_errno = errno.EIO


@register_error
class DriverConfigError(DriverError):
    """The driver was constructed with options it cannot honour."""

    default_errno = errno.EINVAL


@register_error
class GeometryError(DriverConfigError):
    """Sector sizes, alignment offset or disk size do not form a valid geometry."""


@register_error
class BadRequest(DriverError):
    """A request is malformed: bad sector count, scatter/gather list or transfer size."""

    default_errno = errno.EINVAL


@register_error
class OutOfRange(DriverError):
    """A request names sectors beyond the end of the disk (or beyond what a mode can address)."""

    default_errno = errno.ERANGE


@register_error
class MediumError(DriverError):
    """The device could not read or write the sectors (injected fault, short image)."""

    default_errno = errno.EIO


@register_error
class ReadOnlyDevice(DriverError):
    """A write was sent to a device opened read-only."""

    default_errno = errno.EROFS


@register_error
class DriverStopping(DriverError):
    """A command was released from a hang because the driver is shutting down."""

    default_errno = errno.ESHUTDOWN


@register_error
class UnknownDriver(DriverError):
    """A driver spec names no built-in driver, importable class or entry point."""

    default_errno = errno.ENODEV


@register_error
class Lba28Limit(OutOfRange):
    """A PIO command needs LBA48 addressing: LBA28 reaches only the first 2**28 sectors."""
