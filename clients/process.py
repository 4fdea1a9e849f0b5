"""A user process: the file API on top of system calls to the kernel file driver.

Every system call gets a fresh correlation id, which every message it causes
carries (the router's trace shows one ``read()`` across all servers).
"""

from __future__ import annotations

import errno
from typing import Any, Protocol, TypeVar

import msgspec

from clients.file import File
from microkernel.memory import PhysicalMemory
from microkernel.process import Process, ProcessTable
from microkernel.protocol import Ok
from microkernel.stats import Counters
from servers.fs.protocol import FsDir, FsInfo, FsVolume
from servers.vfs.protocol import (
    ROOT_NODE,
    Exit,
    Lookup,
    Mkdir,
    Open,
    OpenAt,
    Opened,
    OpenFlags,
    ReadDir,
    ReadDirAt,
    Rename,
    Rmdir,
    Stat,
    StatFs,
    Unlink,
)


class Host(Protocol):
    """What a process needs of the running system (``microkernel.boot.System`` has it)."""

    counters: Counters
    memory: PhysicalMemory
    processes: ProcessTable

T = TypeVar("T")

MODES: dict[str, OpenFlags] = {
    "rb": OpenFlags.READ,
    "wb": OpenFlags.WRITE | OpenFlags.CREATE | OpenFlags.TRUNCATE,
    "ab": OpenFlags.WRITE | OpenFlags.CREATE | OpenFlags.APPEND,
    "xb": OpenFlags.WRITE | OpenFlags.CREATE | OpenFlags.EXCLUSIVE,
    "r+b": OpenFlags.READ | OpenFlags.WRITE,
    "w+b": OpenFlags.READ | OpenFlags.WRITE | OpenFlags.CREATE | OpenFlags.TRUNCATE,
    "a+b": OpenFlags.READ | OpenFlags.WRITE | OpenFlags.CREATE | OpenFlags.APPEND,
    "x+b": OpenFlags.READ | OpenFlags.WRITE | OpenFlags.CREATE | OpenFlags.EXCLUSIVE,
}


def parse_mode(mode: str) -> OpenFlags:
    """Binary modes only; ``br``/``rb+`` spellings are accepted like Python's ``open``."""
    key = "".join(sorted(mode.replace("+", ""), key="rwaxb".index)) + ("+" if "+" in mode else "")
    key = key.replace("b+", "+b") if "+" in key else key
    flags = MODES.get(key)
    if flags is None or "b" not in mode:
        raise ValueError(f"unsupported mode {mode!r}: use one of {', '.join(MODES)}")
    return flags


class UserProcess:
    """A process as its program sees it."""

    def __init__(self, system: Host, proc: Process) -> None:
        self.system = system
        self.kernel = proc
        self.pid = proc.pid
        self.name = proc.name
        self.syscalls = 0  # this process's own system calls (the counters are system-wide)

    def __repr__(self) -> str:
        return f"<UserProcess pid={self.pid} {self.name!r}>"

    async def syscall(self, request: msgspec.Struct, reply_type: type[T] | None) -> T:
        """One system call to the kernel file driver, with its own correlation id."""
        counters = self.system.counters
        counters.syscalls += 1
        self.syscalls += 1
        counters.syscalls_by_type[type(request).__name__] += 1
        endpoint = self.kernel.endpoint
        result: T = await endpoint.call(
            "vfs", request, Ok if reply_type is None else reply_type, corr=endpoint.router.next_id()
        )
        return result

    async def post(self, request: msgspec.Struct) -> None:
        """A system call that needs no answer (a read-only close): sent, not waited for.

        The kernel file driver handles it in order with the process's later
        calls (an open of the same file waits for the close to finish there).
        """
        counters = self.system.counters
        counters.syscalls += 1
        self.syscalls += 1
        counters.syscalls_by_type[type(request).__name__] += 1
        endpoint = self.kernel.endpoint
        await endpoint.send("vfs", request, corr=endpoint.router.next_id())

    async def open(self, path: str, mode: str = "rb") -> File:
        flags = parse_mode(mode)
        opened: Opened = await self.syscall(Open(path, int(flags)), Opened)
        return File(self, path, opened, flags, self.kernel.windows[opened.handle])

    async def open_at(self, directory: int, name: str, mode: str = "rb") -> File:
        """Open ``name`` in the directory node ``directory`` (``file_id`` of its FsInfo)."""
        flags = parse_mode(mode)
        opened: Opened = await self.syscall(OpenAt(directory, name, int(flags)), Opened)
        return File(self, name, opened, flags, self.kernel.windows[opened.handle])

    async def lookup(self, directory: int, name: str) -> FsInfo:
        """``name`` in the directory node ``directory`` (``ROOT_NODE`` is ``/``): no path walk."""
        info: FsInfo = await self.syscall(Lookup(directory, name), FsInfo)
        return info

    async def scandir_at(self, directory: int = ROOT_NODE) -> list[FsInfo]:
        listing: FsDir = await self.syscall(ReadDirAt(directory), FsDir)
        return [e for e in listing.entries if e.name not in (".", "..")]

    async def stat(self, path: str) -> FsInfo:
        info: FsInfo = await self.syscall(Stat(path), FsInfo)
        return info

    async def scandir(self, path: str = "/") -> list[FsInfo]:
        listing: FsDir = await self.syscall(ReadDir(path), FsDir)
        return [e for e in listing.entries if e.name not in (".", "..")]

    async def listdir(self, path: str = "/") -> list[str]:
        return [e.name for e in await self.scandir(path)]

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except FileNotFoundError:
            return False
        return True

    async def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        if parents:
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts) + 1):
                await self.mkdir("/" + "/".join(parts[:i]), exist_ok=True)
            return
        try:
            await self.syscall(Mkdir(path), FsInfo)
        except FileExistsError:
            if not exist_ok or not (await self.stat(path)).is_dir:
                raise

    async def rmdir(self, path: str) -> None:
        await self.syscall(Rmdir(path), None)

    async def unlink(self, path: str) -> None:
        await self.syscall(Unlink(path), None)

    async def rename(self, src: str, dst: str) -> None:
        await self.syscall(Rename(src, dst), None)

    async def statfs(self, path: str = "/") -> FsVolume:
        volume: FsVolume = await self.syscall(StatFs(path), FsVolume)
        return volume

    async def read_file(self, path: str) -> bytes:
        async with await self.open(path, "rb") as f:
            return await f.read()

    async def write_file(self, path: str, data: Any) -> int:
        async with await self.open(path, "wb") as f:
            return await f.write(data)

    async def exit(self) -> None:
        """Close everything (the kernel writes back dirty parts) and leave."""
        if not self.kernel.alive:
            return
        try:
            await self.syscall(Exit(), None)
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.ESHUTDOWN):
                raise
        finally:
            self.system.processes.destroy(self.kernel)
