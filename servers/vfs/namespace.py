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
    FsForget,
    FsInfo,
    FsLookup,
    FsMkdir,
    FsMkdirAt,
    FsReadDir,
    FsReadDirAt,
    FsRename,
    FsRenameAt,
    FsRmdir,
    FsRmdirAt,
    FsStat,
    FsStatFs,
    FsUnlink,
    FsUnlinkAt,
    FsVolume,
)
from servers.vfs.core import CentralFile
from servers.vfs.mounts import MountTable
from servers.vfs.protocol import (
    Forget,
    Lookup,
    Mkdir,
    MkdirAt,
    ReadDir,
    ReadDirAt,
    Rename,
    RenameAt,
    Rmdir,
    RmdirAt,
    Stat,
    StatFs,
    Unlink,
    UnlinkAt,
)

NODE_SHIFT = 48  # node = file-system index << 48 | file id


class NamespaceMixin:
    """The namespace handlers; mixed into :class:`servers.vfs.server.VfsServer`."""

    endpoint: Endpoint
    mounts: MountTable
    files: dict[tuple[str, int], CentralFile]
    volumes: dict[str, FsVolume]
    filesystems: list[str]

    def _forget_name(self, fs: str, name: str) -> None:
        """An entry named ``name`` goes: the server stops keeping its file's pages."""

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
        self._forget_name(fs, path)
        await self.endpoint.call(fs, FsUnlink(path), Ok)

    @handles(Rename)
    async def on_rename(self, env: Envelope, msg: Rename) -> None:
        fs, src = self.mounts.route(msg.src)
        dst_fs, dst = self.mounts.route(msg.dst)
        if dst_fs != fs:
            raise OSError(18, f"{msg.src} -> {msg.dst}: rename across volumes")  # EXDEV
        self._forget_name(fs, dst)
        await self.endpoint.call(fs, FsRename(src, dst), Ok)

    # ------------------------------------------------- namespace changes by directory node
    def _entry_at(self, node: int, name: str, refuse: int) -> tuple[str, int]:
        """(file system, directory id) for changing ``name`` in ``node``.

        A mount point is not an entry of the volume below it: changing it fails
        with ``refuse`` (EEXIST for mkdir, EBUSY otherwise).
        """
        fs, directory = self.split_node(node)
        if self._mounted_at(fs, directory, name) is not None:
            raise OSError(refuse, f"{name}: a volume is mounted there")
        return fs, directory

    @handles(MkdirAt)
    async def on_mkdir_at(self, env: Envelope, msg: MkdirAt) -> FsInfo:
        fs, directory = self._entry_at(msg.directory, msg.name, errno.EEXIST)
        info: FsInfo = await self.endpoint.call(fs, FsMkdirAt(directory, msg.name), FsInfo)
        return self._for_process(fs, info)

    @handles(RmdirAt)
    async def on_rmdir_at(self, env: Envelope, msg: RmdirAt) -> None:
        fs, directory = self._entry_at(msg.directory, msg.name, errno.EBUSY)
        await self.endpoint.call(fs, FsRmdirAt(directory, msg.name), Ok)

    @handles(UnlinkAt)
    async def on_unlink_at(self, env: Envelope, msg: UnlinkAt) -> None:
        fs, directory = self._entry_at(msg.directory, msg.name, errno.EBUSY)
        self._forget_name(fs, msg.name)
        await self.endpoint.call(fs, FsUnlinkAt(directory, msg.name), Ok)

    @handles(RenameAt)
    async def on_rename_at(self, env: Envelope, msg: RenameAt) -> None:
        fs, src = self._entry_at(msg.src_directory, msg.src_name, errno.EBUSY)
        dst_fs, dst = self._entry_at(msg.dst_directory, msg.dst_name, errno.EBUSY)
        if dst_fs != fs:
            raise OSError(errno.EXDEV, f"{msg.src_name} -> {msg.dst_name}: rename across volumes")
        self._forget_name(fs, msg.dst_name)
        await self.endpoint.call(fs, FsRenameAt(src, msg.src_name, dst, msg.dst_name), Ok)

    @handles(Forget)
    async def on_forget(self, env: Envelope, msg: Forget) -> None:
        """Pass each volume its forgotten ids; nodes that name nothing here are skipped."""
        by_fs: dict[str, list[int]] = {}
        for node in msg.nodes:
            try:
                fs, file_id = self.split_node(node)
            except OSError:
                continue
            by_fs.setdefault(fs, []).append(file_id)
        for fs, file_ids in by_fs.items():
            await self.endpoint.call(fs, FsForget(file_ids), Ok)

    @handles(StatFs)
    async def on_statfs(self, env: Envelope, msg: StatFs) -> FsVolume:
        fs, _ = self.mounts.route(msg.path)
        volume: FsVolume = await self.endpoint.call(fs, FsStatFs(), FsVolume)
        self.volumes[fs] = volume
        return volume
