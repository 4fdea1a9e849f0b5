"""The file-system protocol: what the kernel file driver asks of any file-system server.

A file-system server (today the FAT server, ``servers/fat``) implements every
request here; boot finds such servers by the protocol they speak
(:data:`FsRequest`), not by their name. Facts only one kind of file system has
(FAT's short names, first clusters, FAT type) travel in the ``native`` maps of
:class:`FsInfo` and :class:`FsVolume`, described by that server's own module
(``servers/fat/protocol.py``).

Paths are absolute within the volume (``/docs/notes.txt``). Every file has a
stable ``file_id``: the same file whatever name reaches it (aliases, case, a
renamed parent), never reused; a new file at an old path gets a new id. The
kernel file driver keys its central files by (server, file_id). Open files are
named by the file system's handle. ``MapRange`` is the heart of the read path
(``docs/architecture.md`` §4): the file system resolves the cluster chain to device sector
extents, replies with them (so the kernel file driver knows which file offset
each sector holds), and sends one ``CacheRead`` to the disc cache with the
kernel file driver as ``notify`` port; the cache answers the kernel file driver
directly with ``SectorsReady``.
"""

from __future__ import annotations

from typing import Final

import msgspec

ROOT_FILE_ID: Final = 1  # the file id of every volume's root directory
# A file of at most this many bytes comes with its extents in ``FsOpened``: the kernel
# file driver fetches such a file whole at its open, and needs no ``MapRange`` for it.
OPENED_EXTENTS_MAX: Final = 64 * 1024


class FsInfo(msgspec.Struct, frozen=True, gc=False, tag=True):
    """What stat and readdir report."""

    name: str
    attributes: int
    size: int
    alloc_size: int
    is_dir: bool
    mtime: float
    ctime: float
    atime: float
    file_id: int  # the file system's stable identity of the file
    native: dict[str, str | int] = msgspec.field(default_factory=dict)  # server-specific facts


class FsVolume(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Volume facts the kernel file driver needs to choose the zero-copy or the copy path."""

    device: str
    label: str
    logical_sector_size: int
    alignment_offset: int  # device logical sectors before the first physical-sector boundary
    partition_start: int  # device LBA of the volume's boot sector
    cluster_size: int
    total_clusters: int
    free_clusters: int
    aligned: bool  # every cluster maps onto whole 4 KiB cache pages: zero-copy for all pages
    read_only: bool
    native: dict[str, str | int] = msgspec.field(default_factory=dict)  # server-specific facts


class FileExtent(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """``count`` device logical sectors from ``lba`` hold the file's bytes from ``file_offset``."""

    file_offset: int
    lba: int
    count: int


# ------------------------------------------------------------------ requests
class FsOpen(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Open (optionally create) ``path``; replies FsOpened.

    ``reserve``: when the opened file is empty and holds no clusters (a create),
    allocate room for ``reserve`` bytes as ``FsSetSize(allocate_only)`` would
    (the reply's ``alloc_size`` says how much; 0 when there was no room: the
    first write reserves, and meets the error, itself).
    """

    path: str
    create: bool = False
    exclusive: bool = False
    truncate: bool = False
    reserve: int = 0


class FsClose(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Close the handle; ``size`` (>= 0) publishes a grown size first, in the same message.

    The publish is the growing ``FsSetSize`` of a last close (``write_start``/
    ``write_end`` as there): the file system writes the data pages before the
    entry and stamps the modification time; the handle is closed even when
    the publish fails, and the publish's error is the reply. ``data_written``:
    the sender has written those data pages to the device (``MarkDirty(write=True)``,
    not flushed) and met any error itself, so the file system writes them no
    second time; they are still flushed before the entry, as always.
    """

    handle: int
    size: int = -1
    write_start: int = -1
    write_end: int = -1
    data_written: bool = False  # the sender wrote those data pages to the device already


class FsStat(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    path: str


class FsStatHandle(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    handle: int


class FsReadDir(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    path: str


class FsMkdir(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    path: str


class FsRmdir(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    path: str


class FsUnlink(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    path: str


class FsRename(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    src: str
    dst: str


class MapRange(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Resolve ``length`` bytes at ``offset`` and have the cache bring them in for ``notify``.

    ``zero_from``: file bytes from this offset on are reserved space nobody has
    written (past the size on disk, never handed to the cache), so when the whole
    range lies there the cache supplies zero pages instead of reading stale
    clusters (-1: read everything).
    """

    handle: int
    offset: int
    length: int
    notify: str
    tag: int
    zero_from: int = -1


class FsSetSize(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Truncate or extend; new space is zero-filled in the cache without a disk read.

    ``allocate_only``: allocate clusters for ``size`` bytes without changing the
    size in the directory entry (a reservation; the reply's ``alloc_size`` says
    how much is allocated and ``MapRange`` covers it). A later plain
    ``FsSetSize`` publishes the size, after writing the data pages it covers;
    the last ``FsClose`` gives back what was reserved beyond the size.
    ``write_start``/``write_end``: a byte range the caller is about to write
    whole; clusters lying wholly inside it are not zero-filled (-1: none).
    """

    handle: int
    size: int
    allocate_only: bool = False
    write_start: int = -1
    write_end: int = -1
    data_written: bool = False  # as FsClose's: those data pages are on the device already


class FsSetTimes(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    handle: int
    mtime: float


class FsFsync(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Write the FAT, directory entries and FSInfo, then flush the device (handle 0: whole volume)."""

    handle: int = 0


class FsStatFs(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    pass


class FsLookup(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """``name`` inside the directory whose file id is ``directory`` (no path walk)."""

    directory: int
    name: str


class FsOpenAt(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Open (optionally create) ``name`` inside the directory ``directory``; replies FsOpened."""

    directory: int
    name: str
    create: bool = False
    exclusive: bool = False
    reserve: int = 0  # as FsOpen's


class FsReadDirAt(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """The entries of the directory whose file id is ``directory``."""

    directory: int


class FsMkdirAt(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Make directory ``name`` inside the directory ``directory``; replies FsInfo."""

    directory: int
    name: str


class FsRmdirAt(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Remove the empty directory ``name`` inside the directory ``directory``."""

    directory: int
    name: str


class FsUnlinkAt(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Remove the file ``name`` inside the directory ``directory`` (open handles keep it)."""

    directory: int
    name: str


class FsRenameAt(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Move ``src_name`` in ``src_directory`` to ``dst_name`` in ``dst_directory``.

    The file system refuses to move a directory into itself, judged from the
    directories' identities (their ancestry on the volume), not from path text.
    """

    src_directory: int
    src_name: str
    dst_directory: int
    dst_name: str


class FsForget(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    """Nobody outside the file system references these file ids any more.

    The file system may drop them from its table of ids (an open file keeps
    its id until its last close); the next lookup of such an entry hands out a
    new id. Ids are never reused, so a stale one gets ESTALE, never another file.
    """

    file_ids: list[int]


FsRequest = (
    FsOpen
    | FsClose
    | FsStat
    | FsStatHandle
    | FsReadDir
    | FsMkdir
    | FsRmdir
    | FsUnlink
    | FsRename
    | MapRange
    | FsSetSize
    | FsSetTimes
    | FsFsync
    | FsStatFs
    | FsLookup
    | FsOpenAt
    | FsReadDirAt
    | FsMkdirAt
    | FsRmdirAt
    | FsUnlinkAt
    | FsRenameAt
    | FsForget
)


# ------------------------------------------------------------------- replies
class FsOpened(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Reply to FsOpen/FsOpenAt.

    ``extents``: for a regular file of 1..``OPENED_EXTENTS_MAX`` bytes, where its
    pages are (what ``MapRange`` of its whole pages would answer), so the kernel
    file driver asks the cache for them at once, without a ``MapRange``; empty
    otherwise (and whenever the chain could not be resolved: a read reports that).
    They are true when the reply is sent; a change of the file's size makes them stale.
    ``reserved``: the clusters of the reservation a create made (``FsOpen.reserve``;
    device sectors, as ``Mapped``'s), never written: their pages are zeros the cache
    hands out without a ``MapRange`` either.
    """

    handle: int
    info: FsInfo
    extents: list[FileExtent] = msgspec.field(default_factory=list)
    reserved: list[FileExtent] = msgspec.field(default_factory=list)


class FsDir(msgspec.Struct, frozen=True, gc=False, tag=True):
    entries: list[FsInfo]


class Mapped(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Reply to MapRange: the extents (the cache will notify ``SectorsReady(tag)``), or none."""

    tag: int
    size: int
    extents: list[FileExtent]
