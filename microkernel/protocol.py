"""Messages every server understands: the generic replies.

Each protocol lives in its own module (block device, cache, file system, VFS
syscalls); this one holds only what all of them share.
"""

from __future__ import annotations

import msgspec


class Ok(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Empty success reply."""


class ErrorReply(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """An error as data: errno, an explanation, and the kernel error class name (or "")."""

    errno: int
    message: str
    kind: str = ""
