"""Namespace system calls of the kernel file driver: stat, directories, rename, unlink.

These pass through to the file system that serves the path (``mounts.py``);
the only state they touch here is the size an open file publishes, which is
newer than its directory entry while a writer holds a reservation. Rename and
unlink need no bookkeeping: central files are keyed by file id, not by name.
"""

from __future__ import annotations

import msgspec

from microkernel.ipc import Endpoint, Envelope
from microkernel.protocol import Ok
from microkernel.server import handles
from servers.fs.protocol import (
    FsDir,
    FsInfo,
    FsMkdir,
    FsReadDir,
    FsRename,
    FsRmdir,
    FsStat,
    FsStatFs,
    FsUnlink,
    FsVolume,
)
from servers.vfs.core import CentralFile
from servers.vfs.mounts import MountTable
from servers.vfs.protocol import Mkdir, ReadDir, Rename, Rmdir, Stat, StatFs, Unlink


class NamespaceMixin:
    """The namespace handlers; mixed into :class:`servers.vfs.server.VfsServer`."""

    endpoint: Endpoint
    mounts: MountTable
    files: dict[tuple[str, int], CentralFile]
    volumes: dict[str, FsVolume]

    def _with_open_size(self, fs: str, info: FsInfo) -> FsInfo:
        """An open file reports the size every process sees, not its directory entry's."""
        cfile = self.files.get((fs, info.file_id))
        return info if cfile is None else msgspec.structs.replace(info, size=cfile.size)

    @handles(Stat)
    async def on_stat(self, env: Envelope, msg: Stat) -> FsInfo:
        fs, path = self.mounts.route(msg.path)
        info: FsInfo = await self.endpoint.call(fs, FsStat(path), FsInfo)
        return self._with_open_size(fs, info)

    @handles(ReadDir)
    async def on_readdir(self, env: Envelope, msg: ReadDir) -> FsDir:
        fs, path = self.mounts.route(msg.path)
        listing: FsDir = await self.endpoint.call(fs, FsReadDir(path), FsDir)
        entries = [self._with_open_size(fs, e) for e in listing.entries]
        extra = [await self._mount_info(name, f) for name, f in self.mounts.below(msg.path)]
        return FsDir(entries + extra)

    async def _mount_info(self, name: str, fs: str) -> FsInfo:
        """A mount point shows in its parent's listing as the mounted volume's root."""
        root: FsInfo = await self.endpoint.call(fs, FsStat("/"), FsInfo)
        return msgspec.structs.replace(root, name=name)

    @handles(Mkdir)
    async def on_mkdir(self, env: Envelope, msg: Mkdir) -> FsInfo:
        fs, path = self.mounts.route(msg.path)
        info: FsInfo = await self.endpoint.call(fs, FsMkdir(path), FsInfo)
        return info

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
