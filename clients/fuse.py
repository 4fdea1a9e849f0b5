"""``microkernel mount IMG MOUNTPOINT``: serve an image to the host through FUSE (pyfuse3).

Every FUSE request becomes ordinary calls of one user process of the booted
system, so shell tools on the mount exercise the same message path as the file
library: reads hand the kernel a zero-copy view of the process's mapping,
writes store into it. The one copy this bridge adds is at the FUSE boundary
(bytes handed to or taken from ``/dev/fuse``), and it is counted as
``bytes_copied`` with reason ``fuse`` so the zero-copy claim stays measured.

pyfuse3 runs in asyncio mode on the loop anyio started, next to the servers.
``pyfuse3.main()`` ends on ``fusermount3 -u``/``umount`` or on SIGINT/SIGTERM;
leaving the boot block then shuts the system down cleanly (dirty pages written
back, FAT dirty flag cleared).

FUSE speaks inodes relative to a parent, and so does the kernel file driver
(``Lookup``/``OpenAt``/``ReadDirAt``, ``MkdirAt``/``RmdirAt``/``UnlinkAt``/
``RenameAt`` by node): an inode *is* the node, so every request costs one
directory probe whatever the depth, and no path is ever built. :class:`InodeTable`
keeps each inode's (parent, name) and the host kernel's lookup count (pure, no
I/O). When that count falls to zero (``forget``), the bridge drops the inode and
tells the kernel file driver (``Forget``), so the file system's table of ids
holds only what is open or referenced; nodes are never reused, so a late request
for a forgotten one gets ESTALE, never another file. An unlinked file that is
still open (what ``tempfile.TemporaryFile`` makes) is answered through its open
handle.
"""

from __future__ import annotations

import argparse
import errno
import functools
import itertools
import os
import signal
import stat
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import anyio
import msgspec
import pyfuse3
import pyfuse3.asyncio

from clients.commands import Invocation
from clients.file import File
from clients.process import UserProcess
from microkernel.trace import log
from servers.fs.protocol import FsInfo
from servers.vfs.abi import WINDOW_DATA
from servers.vfs.protocol import Forget, MkdirAt, OpenFlags, RenameAt, RmdirAt, UnlinkAt

P = ParamSpec("P")
R = TypeVar("R")

TIMEOUT = 1.0  # seconds the host kernel may cache names and attributes
ATTR_READ_ONLY, ATTR_VOLUME = 0x01, 0x08
NAME_MAX = 255


class InodeTable:
    """Inode numbers are the system's nodes (``FsInfo.file_id``: a file keeps its node
    across renames, a new file at an old name gets a new one). Each known inode
    remembers (parent inode, name), the lookups of its name go to the kernel
    relative to the parent, and the host kernel's lookup count says when the
    inode may be forgotten.

    FAT names are case-insensitive, so children are keyed case-folded.
    """

    def __init__(self) -> None:
        self._where: dict[int, tuple[int, str]] = {}  # inode -> (parent inode, name)
        self._children: dict[tuple[int, str], int] = {}  # (parent, folded name) -> inode
        self._lookups: dict[int, int] = {}  # inode -> the host kernel's lookup count

    def __len__(self) -> int:
        """Inodes the host kernel holds (the root is never counted)."""
        return len(self._lookups)

    def known(self, parent: int, name: str, inode: int) -> None:
        """``name`` in ``parent`` is ``inode`` (a lookup, readdir or create said so)."""
        if inode == pyfuse3.ROOT_INODE:
            return
        old = self._children.get((parent, name.casefold()))
        if old is not None and old != inode:
            self._where.pop(old, None)
        self._children[(parent, name.casefold())] = inode
        self._where[inode] = (parent, name)

    def looked_up(self, inode: int) -> None:
        """The host kernel got ``inode`` in a reply that counts as a lookup."""
        if inode != pyfuse3.ROOT_INODE:
            self._lookups[inode] = self._lookups.get(inode, 0) + 1

    def forget(self, inode: int, count: int) -> bool:
        """The host kernel dropped ``count`` lookups; True when it holds the inode no more."""
        left = self._lookups.get(inode, 0) - count
        if left > 0:
            self._lookups[inode] = left
            return False
        self._lookups.pop(inode, None)
        where = self._where.pop(inode, None)
        if where is not None and self._children.get((where[0], where[1].casefold())) == inode:
            del self._children[(where[0], where[1].casefold())]
        return inode != pyfuse3.ROOT_INODE

    def referenced(self, inode: int) -> bool:
        return inode in self._lookups

    def where(self, inode: int) -> tuple[int, str]:
        """(parent inode, name) of a known inode."""
        try:
            return self._where[inode]
        except KeyError:
            raise OSError(errno.ESTALE, f"inode {inode} is not known") from None

    def parent(self, inode: int) -> int:
        return inode if inode == pyfuse3.ROOT_INODE else self.where(inode)[0]

    def moved(self, old_parent: int, old: str, new_parent: int, new: str) -> None:
        """``old`` in ``old_parent`` is now ``new`` in ``new_parent`` (its subtree follows)."""
        self.removed(new_parent, new)
        inode = self._children.pop((old_parent, old.casefold()), None)
        if inode is not None:
            self.known(new_parent, new, inode)

    def removed(self, parent: int, name: str) -> None:
        """Forget ``name`` in ``parent``; its inode stays valid only through open files."""
        inode = self._children.pop((parent, name.casefold()), None)
        if inode is not None:
            self._where.pop(inode, None)


def _fuse_errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Errors become FUSE replies: pyfuse3 ends ``main()`` on anything but ``FUSEError``.

    An unexpected exception is logged and answered with EIO, so one bad
    request does not take the whole mount down.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception as exc:
            log.error("FUSE request failed", handler=fn.__name__, exc_info=exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(eq=False)
class OpenFile:
    inode: int
    file: File


class ImageOperations(pyfuse3.Operations):
    """FUSE requests served by one user process of a booted system."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, proc: UserProcess) -> None:
        super().__init__()
        self.proc = proc
        self.memory = proc.system.memory
        self.inodes = InodeTable()
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, tuple[int, list[FsInfo]]] = {}
        self._handles = itertools.count(1)
        # File.write checks the size and then extends it across an await: writes to one
        # file are serialised so a short write cannot shrink what a longer one just grew.
        self._size_locks: defaultdict[int, anyio.Lock] = defaultdict(anyio.Lock)
        self.uid, self.gid = os.getuid(), os.getgid()
        self._unreferenced: set[int] = set()  # forgotten by the host, not yet by the system
        self._handing_out = 0  # requests in flight whose reply counts as a lookup

    @asynccontextmanager
    async def _lookup_reply(self) -> AsyncIterator[None]:
        """Around requests whose reply counts as a lookup; forgets wait until none is running.

        A forget of node N sent while such a request is in flight could reach
        the file system after the lookup that hands N to the host again, which
        would then hold an id the file system had dropped.
        """
        self._handing_out += 1
        try:
            yield
        finally:
            self._handing_out -= 1
            await self._send_forgets()

    async def _send_forgets(self) -> None:
        """Tell the system which nodes the host kernel no longer holds (one ``Forget``)."""
        if self._handing_out or not self._unreferenced:
            return
        nodes = sorted(i for i in self._unreferenced if not self.inodes.referenced(i))
        self._unreferenced.clear()
        if not nodes:
            return
        try:
            await self.proc.syscall(Forget(nodes), None)
        except Exception as exc:  # forget must not fail; the ids only stay in the table
            log.warning("FUSE forget not passed on", nodes=len(nodes), exc_info=exc)

    # ------------------------------------------------------------------ attributes
    def _attributes(self, inode: int, info: FsInfo) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = attr.attr_timeout = TIMEOUT
        if info.is_dir:
            attr.st_mode, attr.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            perms = 0o444 if info.attributes & ATTR_READ_ONLY else 0o644
            attr.st_mode, attr.st_nlink = stat.S_IFREG | perms, 1
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_size = self._open_size(inode, info.size)
        attr.st_blksize = 4096
        attr.st_blocks = -(-info.alloc_size // 512)
        attr.st_mtime_ns = attr.st_ctime_ns = int(info.mtime * 1e9)
        attr.st_atime_ns = int(info.atime * 1e9)
        return attr

    def _open_size(self, inode: int, size: int) -> int:
        """An open file's size from its state page: newer than the directory entry."""
        for entry in self.files.values():
            if entry.inode == inode:
                return entry.file.size
        return size

    def _counted(self, parent: int, info: FsInfo) -> pyfuse3.EntryAttributes:
        """``info`` goes to the host as a lookup reply: remember it, count the lookup."""
        self.inodes.known(parent, info.name, info.file_id)
        self.inodes.looked_up(info.file_id)
        return self._attributes(info.file_id, info)

    async def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        """Attributes of a known inode: through an open handle if any (it may be unlinked)."""
        for entry in self.files.values():
            if entry.inode == inode:
                return self._attributes(inode, await entry.file.stat())
        if inode == pyfuse3.ROOT_INODE:
            return self._attributes(inode, await self.proc.stat("/"))
        parent, name = self.inodes.where(inode)
        info = await self.proc.lookup(parent, name)
        if info.file_id != inode:
            raise OSError(errno.ENOENT, f"{name}: replaced by another file")
        return self._attributes(inode, info)

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        async with self._lookup_reply():
            if text in (".", ".."):
                inode = parent_inode if text == "." else self.inodes.parent(parent_inode)
                attr = await self._entry(inode)
                self.inodes.looked_up(inode)
                return attr
            info = await self.proc.lookup(parent_inode, text)
            return self._counted(parent_inode, msgspec.structs.replace(info, name=text))

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._entry(inode)

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """Size and modification time are stored; FAT has no modes or owners to keep."""
        if fields.update_size:
            await self._truncate(inode, fh, attr.st_size)
        if fields.update_mtime:
            await self._set_mtime(inode, fh, attr.st_mtime_ns / 1e9)
        return await self._entry(inode)

    async def _set_mtime(self, inode: int, fh: int | None, mtime: float) -> None:
        entry = self.files.get(fh) if fh is not None else None
        if entry is not None and entry.file.flags & OpenFlags.WRITE:
            await entry.file.set_times(mtime)
            return
        if inode == pyfuse3.ROOT_INODE:
            return
        parent, name = self.inodes.where(inode)
        if (await self.proc.lookup(parent, name)).is_dir:
            return  # a directory's times live in its parent's entry; not exposed here
        async with await self.proc.open_at(parent, name, "r+b") as f:
            await f.set_times(mtime)

    async def _truncate(self, inode: int, fh: int | None, size: int) -> None:
        entry = self.files.get(fh) if fh is not None else None
        async with self._size_locks[inode]:
            if entry is not None:
                await entry.file.truncate(size)
                return
            parent, name = self.inodes.where(inode)
            async with await self.proc.open_at(parent, name, "r+b") as f:
                await f.truncate(size)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """The host dropped lookups; inodes it no longer holds are forgotten by the system."""
        for inode, count in inode_list:
            if self.inodes.forget(inode, count):
                self._unreferenced.add(inode)
        await self._send_forgets()

    # ------------------------------------------------------------------ directories
    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """The listing is taken once per open, so readdir offsets stay stable."""
        entries = [e for e in await self.proc.scandir_at(inode) if not e.attributes & ATTR_VOLUME]
        fh = next(self._handles)
        self.dirs[fh] = (inode, entries)
        return fh

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        parent, entries = self.dirs[fh]
        async with self._lookup_reply():
            for index in range(start_id, len(entries)):
                info = entries[index]
                attr = self._attributes(info.file_id, info)
                if not pyfuse3.readdir_reply(token, os.fsencode(info.name), attr, index + 1):
                    return
                self._counted(parent, info)  # readdirplus: an accepted entry is a lookup

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        async with self._lookup_reply():
            info = await self.proc.syscall(MkdirAt(parent_inode, text), FsInfo)
            return self._counted(parent_inode, msgspec.structs.replace(info, name=text))

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        await self.proc.syscall(RmdirAt(parent_inode, text), None)
        self.inodes.removed(parent_inode, text)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        await self.proc.syscall(UnlinkAt(parent_inode, text), None)
        self.inodes.removed(parent_inode, text)

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """A FAT directory entry cannot be swapped atomically: RENAME_EXCHANGE is refused."""
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "rename exchange is not supported on FAT")
        if flags & pyfuse3.RENAME_NOREPLACE and await self._exists(parent_inode_new, new):
            raise FileExistsError(errno.EEXIST, f"{new}: exists")
        await self.proc.syscall(RenameAt(parent_inode_old, old, parent_inode_new, new), None)
        self.inodes.moved(parent_inode_old, old, parent_inode_new, new)

    async def _exists(self, parent: int, name: str) -> bool:
        try:
            await self.proc.lookup(parent, name)
        except FileNotFoundError:
            return False
        return True

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        volume = await self.proc.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = volume.cluster_size
        data.f_blocks = volume.total_clusters
        data.f_bfree = data.f_bavail = volume.free_clusters
        data.f_files = data.f_ffree = data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    # ------------------------------------------------------------------------ files
    def _register(self, inode: int, file: File) -> pyfuse3.FileInfo:
        fh = next(self._handles)
        self.files[fh] = OpenFile(inode, file)
        return pyfuse3.FileInfo(fh=fh)

    def _file(self, fh: int) -> OpenFile:
        try:
            return self.files[fh]
        except KeyError:
            raise OSError(errno.EBADF, f"file handle {fh} is not open") from None

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        mode = "rb" if flags & os.O_ACCMODE == os.O_RDONLY else "r+b"
        parent, name = self.inodes.where(inode)
        f = await self.proc.open_at(parent, name, mode)
        if flags & os.O_TRUNC and mode != "rb":
            await f.truncate(0)
        return self._register(inode, f)

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text = os.fsdecode(name)
        async with self._lookup_reply():
            f = await self.proc.open_at(parent_inode, text, "x+b" if flags & os.O_EXCL else "w+b")
            stat = await f.stat()
            attr = self._counted(parent_inode, msgspec.structs.replace(stat, name=text))
            return self._register(stat.file_id, f), attr

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """A view of the mapping: pyfuse3 hands it to /dev/fuse, the one (counted) copy."""
        f = self._file(fh).file
        size = max(0, min(size, f.size - off))
        if size == 0:
            return b""
        if off + size > WINDOW_DATA:  # beyond what a window maps: the library's copying read
            f.seek(off)
            data = await f.read(size)
        else:
            data = await f.view(off, size)  # type: ignore[assignment]  # any buffer will do
        self.memory.count_copy(len(data), "fuse")
        return data

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        entry = self._file(fh)
        self.memory.count_copy(len(buf), "fuse")  # taken from /dev/fuse by pyfuse3
        async with self._size_locks[entry.inode]:
            entry.file.seek(off)
            return await entry.file.write(buf)

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        await self._file(fh).file.flush()

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._file(fh).file.fsync()

    @_fuse_errors
    async def release(self, fh: int) -> None:
        entry = self.files.pop(fh, None)
        if entry is not None:
            await entry.file.close()

    async def close_all(self) -> None:
        """Close what the host left open (a killed reader): the data is written back."""
        while self.files:
            _, entry = self.files.popitem()
            await entry.file.close()


# ------------------------------------------------------------------------- serving
async def _stop_on_signal(stopped: list[int]) -> None:
    """SIGINT/SIGTERM end ``pyfuse3.main()``; the mount is then ours to remove."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            stopped.append(signum)
            pyfuse3.terminate()
            return


async def serve(proc: UserProcess, image: str, mountpoint: str) -> None:
    """Mount, answer requests until unmounted or signalled, then close every file."""
    ops = ImageOperations(proc)
    options = set(pyfuse3.default_options) | {f"fsname={image}", "subtype=microkernel"}
    pyfuse3.init(ops, mountpoint, options)
    stopped: list[int] = []
    unmounted_outside = False
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, stopped)
            if sys.stderr.isatty():
                print(
                    f"{image} mounted on {mountpoint}; Ctrl-C or "
                    f"`fusermount3 -u {mountpoint}` unmounts",
                    file=sys.stderr,
                )
            await pyfuse3.main()
            unmounted_outside = not stopped
            tg.cancel_scope.cancel()
    finally:
        # never stat the mount point here: that would be a request to this very loop
        pyfuse3.close(unmount=not unmounted_outside)
        await ops.close_all()


async def _mount(inv: Invocation) -> None:
    args = inv.args
    if not os.path.isdir(args.mountpoint):
        missing = not os.path.exists(args.mountpoint)
        inv.fail(args.mountpoint, OSError(errno.ENOENT if missing else errno.ENOTDIR, ""))
        return
    try:
        async with inv.session(args.image, writing=True) as proc:
            await serve(proc, args.image, args.mountpoint)
    except RuntimeError as exc:  # pyfuse3 could not mount; libfuse said why on stderr
        inv.fail(args.mountpoint, f"cannot mount: {exc}")
    except OSError as exc:
        inv.boot_failed(args.image, exc)


async def cli_mount(args: argparse.Namespace) -> int:
    """``mount IMG MOUNTPOINT``: in the foreground until unmounted or interrupted."""
    pyfuse3.asyncio.enable()
    inv = Invocation(args)
    await _mount(inv)
    return inv.finish()


__all__ = ["ImageOperations", "InodeTable", "cli_mount", "serve"]
