"""The kernel's exception hierarchy and its translation to and from wire data.

Errors cross IPC as data (``ErrorReply(errno, message, kind)``) and become
exceptions again in the caller's stub, in one place (:func:`error_from_reply`),
like h11 translates protocol errors at a single boundary. Plain errno errors
come back as the builtin ``OSError`` subclass Python picks for the errno
(``FileNotFoundError`` for ENOENT, ...), so user code catches what it expects.
"""

from __future__ import annotations

import errno as errno_


class KernelError(OSError):
    """Base of the kernel's own errors; each subclass fixes its errno."""

    default_errno = errno_.EIO

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(err if err is not None else self.default_errno, message)


class PortNotFound(KernelError):
    """A message was addressed to a port no server has registered."""

    default_errno = errno_.ENXIO


class CapabilityDenied(KernelError):
    """The boot configuration does not let this sender reach that port."""

    default_errno = errno_.EACCES


class MessageDenied(CapabilityDenied):
    """The sender may reach that port, but not with this message type (capability table)."""

    default_errno = errno_.EPERM


class ForgedReply(CapabilityDenied):
    """A reply named a call that was not sent to the replier (a guessed call id)."""

    default_errno = errno_.EPERM


class MalformedMessage(KernelError):
    """The body could not be decoded as one of the receiver's message types."""

    default_errno = errno_.EBADMSG


class CallTimeout(KernelError, TimeoutError):
    """No reply arrived within the call's timeout."""

    default_errno = errno_.ETIMEDOUT


class ServerCrashed(KernelError):
    """The server handling the call raised unexpectedly and was restarted."""

    default_errno = errno_.EIO


class ServerStopped(KernelError):
    """The server shut down before replying."""

    default_errno = errno_.ESHUTDOWN


_KINDS: dict[str, type[KernelError]] = {
    cls.__name__: cls
    for cls in (
        PortNotFound,
        CapabilityDenied,
        MessageDenied,
        ForgedReply,
        MalformedMessage,
        CallTimeout,
        ServerCrashed,
        ServerStopped,
    )
}


def register_error(cls: type[KernelError]) -> type[KernelError]:
    """Let a server's own KernelError subclass survive the trip across IPC (class decorator)."""
    _KINDS[cls.__name__] = cls
    return cls


def error_to_wire(exc: BaseException) -> tuple[int, str, str]:
    """(errno, message, kind) for an exception a handler raised."""
    if isinstance(exc, OSError):
        err = exc.errno if exc.errno is not None else errno_.EIO
        message = exc.strerror if exc.strerror is not None else str(exc)
        kind = type(exc).__name__ if type(exc).__name__ in _KINDS else ""
        return err, message, kind
    return errno_.EIO, f"{type(exc).__name__}: {exc}", ServerCrashed.__name__


def error_from_wire(err: int, message: str, kind: str) -> OSError:
    """The exception a caller raises for an error reply."""
    cls = _KINDS.get(kind)
    if cls is not None:
        return cls(message, err)
    return OSError(err, message)
