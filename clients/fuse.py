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

FUSE speaks inodes, the file system speaks paths: :class:`InodeTable` keeps the
mapping (pure, no I/O). Inode numbers are never reused while mounted, so a
``forget`` needs no bookkeeping.
"""

from __future__ import annotations

import argparse
import errno
import functools
import itertools
import os
import posixpath
import signal
import stat
import sys
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import anyio
import pyfuse3
import pyfuse3.asyncio

from clients.commands import Invocation
from clients.file import File
from clients.process import UserProcess
from microkernel.trace import log
from servers.fs.protocol import FsInfo
from servers.vfs.abi import WINDOW_DATA
from servers.vfs.protocol import OpenFlags

P = ParamSpec("P")
R = TypeVar("R")

TIMEOUT = 1.0  # seconds the host kernel may cache names and attributes
ATTR_READ_ONLY, ATTR_VOLUME = 0x01, 0x08
NAME_MAX = 255


class InodeTable:
    """Inode numbers <-> volume paths, following renames and removals.

    FAT names are case-insensitive, so a path is keyed case-folded: ``/A.TXT``
    and ``/a.txt`` are one inode, as they are one file.
    """

    def __init__(self) -> None:
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: "/"}
        self._inodes: dict[str, int] = {"/": pyfuse3.ROOT_INODE}
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)

    def path(self, inode: int) -> str:
        try:
            return self._paths[inode]
        except KeyError:
            raise OSError(errno.ESTALE, f"inode {inode} is not known") from None

    def inode(self, path: str) -> int:
        """The inode of ``path``, allocating a fresh number the first time it is seen."""
        key = path.casefold()
        inode = self._inodes.get(key)
        if inode is None:
            inode = self._inodes[key] = next(self._next)
        self._paths[inode] = path
        return inode

    def child(self, parent: int, name: bytes) -> str:
        """The path of ``name`` in directory ``parent`` (``.`` and ``..`` resolved)."""
        base = self.path(parent)
        text = os.fsdecode(name)
        if text == ".":
            return base
        if text == "..":
            return posixpath.dirname(base)
        return posixpath.join(base, text)

    def moved(self, old: str, new: str) -> None:
        """``old`` (and everything below it) is now ``new``; a replaced ``new`` is gone."""
        self.removed(new)
        prefix = old.casefold() + "/"
        for key, inode in list(self._inodes.items()):
            if key == old.casefold() or key.startswith(prefix):
                del self._inodes[key]
                path = new + self._paths[inode][len(old) :]
                self._inodes[path.casefold()] = inode
                self._paths[inode] = path

    def removed(self, path: str) -> None:
        """Forget ``path`` and everything below it (their inodes become stale)."""
        prefix = path.casefold() + "/"
        for key, inode in list(self._inodes.items()):
            if key == path.casefold() or key.startswith(prefix):
                del self._inodes[key]
                self._paths.pop(inode, None)


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
        self.dirs: dict[int, tuple[str, list[FsInfo]]] = {}
        self._handles = itertools.count(1)
        # File.write checks the size and then extends it across an await: writes to one
        # file are serialised so a short write cannot shrink what a longer one just grew.
        self._size_locks: defaultdict[int, anyio.Lock] = defaultdict(anyio.Lock)
        self.uid, self.gid = os.getuid(), os.getgid()

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

    async def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        return self._attributes(self.inodes.inode(path), await self.proc.stat(path))

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self._entry(self.inodes.child(parent_inode, name))

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._entry(self.inodes.path(inode))

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
        return await self._entry(self.inodes.path(inode))

    async def _set_mtime(self, inode: int, fh: int | None, mtime: float) -> None:
        entry = self.files.get(fh) if fh is not None else None
        if entry is not None and entry.file.flags & OpenFlags.WRITE:
            await entry.file.set_times(mtime)
            return
        if (await self.proc.stat(self.inodes.path(inode))).is_dir:
            return  # a directory's times live in its parent's entry; not exposed here
        async with await self.proc.open(self.inodes.path(inode), "r+b") as f:
            await f.set_times(mtime)

    async def _truncate(self, inode: int, fh: int | None, size: int) -> None:
        entry = self.files.get(fh) if fh is not None else None
        async with self._size_locks[inode]:
            if entry is not None:
                await entry.file.truncate(size)
                return
            async with await self.proc.open(self.inodes.path(inode), "r+b") as f:
                await f.truncate(size)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to do: inode numbers are not reused while mounted."""

    # ------------------------------------------------------------------ directories
    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """The listing is taken once per open, so readdir offsets stay stable."""
        path = self.inodes.path(inode)
        entries = [e for e in await self.proc.scandir(path) if not e.attributes & ATTR_VOLUME]
        fh = next(self._handles)
        self.dirs[fh] = (path, entries)
        return fh

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path, entries = self.dirs[fh]
        for index in range(start_id, len(entries)):
            info = entries[index]
            inode = self.inodes.inode(posixpath.join(path, info.name))
            attr = self._attributes(inode, info)
            if not pyfuse3.readdir_reply(token, os.fsencode(info.name), attr, index + 1):
                return

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self.inodes.child(parent_inode, name)
        await self.proc.mkdir(path)
        return await self._entry(path)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self.inodes.child(parent_inode, name)
        await self.proc.rmdir(path)
        self.inodes.removed(path)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self.inodes.child(parent_inode, name)
        await self.proc.unlink(path)
        self.inodes.removed(path)

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
        old = self.inodes.child(parent_inode_old, name_old)
        new = self.inodes.child(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "rename exchange is not supported on FAT")
        if flags & pyfuse3.RENAME_NOREPLACE and await self.proc.exists(new):
            raise FileExistsError(errno.EEXIST, f"{new}: exists")
        await self.proc.rename(old, new)
        self.inodes.moved(old, new)

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
        f = await self.proc.open(self.inodes.path(inode), mode)
        if flags & os.O_TRUNC and mode != "rb":
            await f.truncate(0)
        return self._register(inode, f)

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self.inodes.child(parent_inode, name)
        f = await self.proc.open(path, "x+b" if flags & os.O_EXCL else "w+b")
        inode = self.inodes.inode(path)
        info = self._register(inode, f)
        return info, await self._entry(path)

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
        inv.fail(args.mountpoint, NotADirectoryError(errno.ENOTDIR, "not a directory"))
        return
    try:
        async with inv.session(args.image) as proc:
            await serve(proc, args.image, args.mountpoint)
    except RuntimeError as exc:  # pyfuse3 could not mount; libfuse said why on stderr
        inv.fail(args.mountpoint, f"cannot mount: {exc}")
    except OSError as exc:
        inv.fail(args.image, exc, detail=True)


async def cli_mount(args: argparse.Namespace) -> int:
    """``mount IMG MOUNTPOINT``: in the foreground until unmounted or interrupted."""
    pyfuse3.asyncio.enable()
    inv = Invocation(args)
    await _mount(inv)
    return inv.finish()


__all__ = ["ImageOperations", "InodeTable", "cli_mount", "serve"]
