"""Namespace system calls of the kernel file driver: stat, directories, rename, unlink.

These pass through to the file system that serves the path (``mounts.py``);
the only state they touch here is the size an open file publishes, which is
newer than its directory entry while a writer holds a reservation. Rename and
unlink need no bookkeeping: central files are keyed by file id, not by name.

Lookups relative to a directory (``Lookup``, ``OpenAt``, ``ReadDirAt``) name
the directory by its *node*: the file system's file id with the file system's
index in the top bits (``node_of``). Every ``FsInfo`` a process gets carries
the node in ``file_id``; the root of ``/`` is node 1, and a lookup of a mount
point's name in it crosses to the mounted volume's root.
"""

from __future__ import annotations

import errno

import msgspec

from microkernel.ipc import Endpoint, Envelope
from microkernel.protocol import Ok
from microkernel.server import handles
from servers.fs.protocol import (
    ROOT_FILE_ID,
    FsDir,
    FsInfo,
    FsLookup,
    FsMkdir,
    FsReadDir,
    FsReadDirAt,
    FsRename,
    FsRmdir,
    FsStat,
    FsStatFs,
    FsUnlink,
    FsVolume,
)
from servers.vfs.core import CentralFile
from servers.vfs.mounts import MountTable
from servers.vfs.protocol import (
    Lookup,
    Mkdir,
    ReadDir,
    ReadDirAt,
    Rename,
    Rmdir,
    Stat,
    StatFs,
    Unlink,
)

NODE_SHIFT = 48  # node = file-system index << 48 | file id


class NamespaceMixin:
    """The namespace handlers; mixed into :class:`servers.vfs.server.VfsServer`."""

    endpoint: Endpoint
    mounts: MountTable
    files: dict[tuple[str, int], CentralFile]
    volumes: dict[str, FsVolume]
    filesystems: list[str]

    # ------------------------------------------------------------------- nodes
    def node_of(self, fs: str, file_id: int) -> int:
        return self.filesystems.index(fs) << NODE_SHIFT | file_id

    def split_node(self, node: int) -> tuple[str, int]:
        """(file system, file id) of a node; ESTALE for one no volume here gave."""
        index, file_id = node >> NODE_SHIFT, node & ((1 << NODE_SHIFT) - 1)
        if node < 0 or index >= len(self.filesystems) or file_id == 0:
            raise OSError(errno.ESTALE, f"node {node} names no file here")
        return self.filesystems[index], file_id

    def _for_process(self, fs: str, info: FsInfo) -> FsInfo:
        """What a process sees: the node as ``file_id``, an open file's published size."""
        cfile = self.files.get((fs, info.file_id))
        size = info.size if cfile is None else cfile.size
        return msgspec.structs.replace(info, size=size, file_id=self.node_of(fs, info.file_id))

    def _mounted_at(self, fs: str, directory: int, name: str) -> str | None:
        """The volume mounted at ``name`` in the root of ``/`` (lookups cross into it)."""
        if fs != self.mounts.root or directory != ROOT_FILE_ID:
            return None
        return self.mounts.mounted_in_root(name)

    @handles(Lookup)
    async def on_lookup(self, env: Envelope, msg: Lookup) -> FsInfo:
        fs, directory = self.split_node(msg.directory)
        mounted = self._mounted_at(fs, directory, msg.name)
        if mounted is not None:
            return self._for_process(mounted, await self._mount_info(msg.name, mounted))
        info: FsInfo = await self.endpoint.call(fs, FsLookup(directory, msg.name), FsInfo)
        return self._for_process(fs, info)

    @handles(ReadDirAt)
    async def on_readdir_at(self, env: Envelope, msg: ReadDirAt) -> FsDir:
        fs, directory = self.split_node(msg.directory)
        listing: FsDir = await self.endpoint.call(fs, FsReadDirAt(directory), FsDir)
        entries = [self._for_process(fs, e) for e in listing.entries]
        if fs == self.mounts.root and directory == ROOT_FILE_ID:
            for name, mounted in self.mounts.below("/"):
                entries.append(self._for_process(mounted, await self._mount_info(name, mounted)))
        return FsDir(entries)

    @handles(Stat)
    async def on_stat(self, env: Envelope, msg: Stat) -> FsInfo:
        fs, path = self.mounts.route(msg.path)
        info: FsInfo = await self.endpoint.call(fs, FsStat(path), FsInfo)
        return self._for_process(fs, info)

    @handles(ReadDir)
    async def on_readdir(self, env: Envelope, msg: ReadDir) -> FsDir:
        fs, path = self.mounts.route(msg.path)
        listing: FsDir = await self.endpoint.call(fs, FsReadDir(path), FsDir)
        entries = [self._for_process(fs, e) for e in listing.entries]
        for name, mounted in self.mounts.below(msg.path):
            entries.append(self._for_process(mounted, await self._mount_info(name, mounted)))
        return FsDir(entries)

    async def _mount_info(self, name: str, fs: str) -> FsInfo:
        """A mount point shows in its parent's listing as the mounted volume's root."""
        root: FsInfo = await self.endpoint.call(fs, FsStat("/"), FsInfo)
        return msgspec.structs.replace(root, name=name)

    @handles(Mkdir)
    async def on_mkdir(self, env: Envelope, msg: Mkdir) -> FsInfo:
        fs, path = self.mounts.route(msg.path)
        info: FsInfo = await self.endpoint.call(fs, FsMkdir(path), FsInfo)
        return self._for_process(fs, info)

    @handles(Rmdir)
    async def on_rmdir(self, env: Envelope, msg: Rmdir) -> None:
        fs, path = self.mounts.route(msg.path)
        await self.endpoint.call(fs, FsRmdir(path), Ok)

    @handles(Unlink)
    async def on_unlink(self, env: Envelope, msg: Unlink) -> None:
        fs, path = self.mounts.route(msg.path)
        await self.endpoint.call(fs, FsUnlink(path), Ok)

    @handles(Rename)
    async def on_rename(self, env: Envelope, msg: Rename) -> None:
        fs, src = self.mounts.route(msg.src)
        dst_fs, dst = self.mounts.route(msg.dst)
        if dst_fs != fs:
            raise OSError(18, f"{msg.src} -> {msg.dst}: rename across volumes")  # EXDEV
        await self.endpoint.call(fs, FsRename(src, dst), Ok)

    @handles(StatFs)
    async def on_statfs(self, env: Envelope, msg: StatFs) -> FsVolume:
        fs, _ = self.mounts.route(msg.path)
        volume: FsVolume = await self.endpoint.call(fs, FsStatFs(), FsVolume)
        self.volumes[fs] = volume
        return volume
