"""The system-call protocol: user processes -> kernel file driver (``vfs``).

The two syscalls of the design are ``CachePart`` (bring part of a file into
the process's mapping) and ``SetSize``; everything else is ordinary. ``Read``
and ``Write`` are the legacy copying pair, kept so the benefit of the design
can be measured on the same system: they are the only messages that carry
file data, and every byte they move is counted in ``bytes_copied``.
"""

from __future__ import annotations

import enum

import msgspec

# Requests are map-encoded (not array_like): the kernel file driver's inbox also accepts
# the cache's notifications, and a msgspec union cannot mix the two encodings.


class OpenFlags(enum.IntFlag):
    READ = 1
    WRITE = 2
    CREATE = 4
    EXCLUSIVE = 8
    TRUNCATE = 16
    APPEND = 32


class Open(msgspec.Struct, frozen=True, gc=False, tag=True):
    path: str
    flags: int


class Close(msgspec.Struct, frozen=True, gc=False, tag=True):
    handle: int


class CachePart(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Map the file part around ``position`` (about ``size`` bytes) into the caller's window."""

    handle: int
    position: int
    size: int


class SetSize(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Change the file size. ``reserve``: only allocate room for the caller's coming
    writes; the size other processes see changes when it is published.
    ``write_start``: a growing publish names where the caller's written bytes
    begin; what lies between the old size and it is zero-filled (-1: nothing
    was written, all of the growth reads as zeros).
    ``map_end``: with ``reserve`` and ``write_start``, the bytes from
    ``write_start`` to here are about to be written: the reply comes with their
    pages mapped into the caller's window (the write needs no ``CachePart``;
    -1: map nothing)."""

    handle: int
    size: int
    reserve: bool = False
    write_start: int = -1
    map_end: int = -1


class Flush(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Hand the caller's dirty parts to the cache (no device flush)."""

    handle: int


class Fsync(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Write back dirty parts and metadata and flush the device."""

    handle: int


class Stat(msgspec.Struct, frozen=True, gc=False, tag=True):
    path: str


class ReadDir(msgspec.Struct, frozen=True, gc=False, tag=True):
    path: str


class Mkdir(msgspec.Struct, frozen=True, gc=False, tag=True):
    path: str


class Rmdir(msgspec.Struct, frozen=True, gc=False, tag=True):
    path: str


class Unlink(msgspec.Struct, frozen=True, gc=False, tag=True):
    path: str


class Rename(msgspec.Struct, frozen=True, gc=False, tag=True):
    src: str
    dst: str


class Read(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Legacy copying read: the data comes back in the reply (counted as a copy)."""

    handle: int
    position: int
    size: int


class Write(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Legacy copying write: the data travels in the message (counted as a copy)."""

    handle: int
    position: int
    data: bytes


class Exit(msgspec.Struct, frozen=True, gc=False, tag=True):
    """The process is going away: close everything it has open."""


class StatFs(msgspec.Struct, frozen=True, gc=False, tag=True):
    """The volume that serves ``path``."""

    path: str = "/"


class SetTimes(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Set the modification (and access) time, seconds since the epoch, like ``os.utime``."""

    handle: int
    mtime: float


class StatHandle(msgspec.Struct, frozen=True, gc=False, tag=True):
    """fstat: the open file's metadata, even after it was unlinked or renamed."""

    handle: int


class Lookup(msgspec.Struct, frozen=True, gc=False, tag=True):
    """``name`` inside the directory whose node is ``directory`` (a ``file_id`` from an earlier
    reply; 1 is the root). Replies FsInfo; its ``file_id`` is the entry's node."""

    directory: int
    name: str


class OpenAt(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Open ``name`` inside the directory node ``directory`` (like ``openat``)."""

    directory: int
    name: str
    flags: int


class ReadDirAt(msgspec.Struct, frozen=True, gc=False, tag=True):
    """The entries of the directory node ``directory``."""

    directory: int


class MkdirAt(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Make directory ``name`` inside the directory node ``directory`` (like ``mkdirat``).
    Replies FsInfo; its ``file_id`` is the new directory's node."""

    directory: int
    name: str


class RmdirAt(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Remove the empty directory ``name`` inside the directory node ``directory``."""

    directory: int
    name: str


class UnlinkAt(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Remove the file ``name`` inside the directory node ``directory``."""

    directory: int
    name: str


class RenameAt(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Move ``src_name`` in node ``src_directory`` to ``dst_name`` in node ``dst_directory``
    (like ``renameat``); both nodes must be on one volume (EXDEV otherwise)."""

    src_directory: int
    src_name: str
    dst_directory: int
    dst_name: str


class Forget(msgspec.Struct, frozen=True, gc=False, tag=True):
    """The caller holds none of these nodes any more (FUSE's ``forget``): the file systems
    may drop their ids. A node used after it was forgotten gets ESTALE or a new node."""

    nodes: list[int]


Syscall = (
    Open
    | Close
    | CachePart
    | SetSize
    | Flush
    | Fsync
    | Stat
    | ReadDir
    | Mkdir
    | Rmdir
    | Unlink
    | Rename
    | Read
    | Write
    | Exit
    | StatFs
    | SetTimes
    | StatHandle
    | Lookup
    | OpenAt
    | ReadDirAt
    | MkdirAt
    | RmdirAt
    | UnlinkAt
    | RenameAt
    | Forget
)


# ------------------------------------------------------------------- replies
class Opened(msgspec.Struct, frozen=True, gc=False, tag=True):
    """The handle; the file's window (FileMap, state page, process page, data) is in the
    process's address space under this handle."""

    handle: int
    slot: int  # index of this handle's position in the per-process file page
    size: int
    zero_copy: bool  # every page of this file maps straight onto cache frames
    reserved: int = 0  # a created file's first reservation (its first pages mapped): bytes


class PartReady(msgspec.Struct, frozen=True, gc=False, tag=True):
    """The pages ``position .. position+size`` are mapped (size 0: at or past end of file)."""

    position: int
    size: int


class SizeSet(msgspec.Struct, frozen=True, gc=False, tag=True):
    size: int
    alloc_size: int


class Data(msgspec.Struct, frozen=True, gc=False, tag=True):
    data: bytes


class Written(msgspec.Struct, frozen=True, gc=False, tag=True):
    count: int


ROOT_NODE = 1  # the node of ``/``: the root directory of the volume mounted there
