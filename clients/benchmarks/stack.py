"""Timed reads through the whole system (file library, VFS, FAT, cache, driver).

A cold read needs data that no cache holds, so every cold sample boots a fresh
system and times only what a program would wait for once the system is up:
open, read to the end, close. Boot time is kept as a separate counter
(``boot_s``) so nobody mistakes it for part of the read, nor forgets it.
"""

from __future__ import annotations

import mmap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread

import microkernel
from clients.benchmarks.harness import Sample, stats_counters, stopwatch
from clients.benchmarks.images import Image
from clients.process import UserProcess
from microkernel.boot import System
from servers.vfs.protocol import Data, Read

Reader = Callable[[UserProcess, str, memoryview], Awaitable[int]]
PAGE = 4096


class WrongData(RuntimeError):
    """The system returned other bytes than were put on the image: a bug, not a figure."""


@asynccontextmanager
async def booted(
    image: Path, *, driver: str = "nvme", trace: Path | None = None, **options: Any
) -> AsyncIterator[tuple[System, UserProcess]]:
    """A system on ``image`` (read-only, so every run sees the same volume) and one process."""
    async with microkernel.boot(
        image=image, driver=driver, trace=trace, read_only=True, **options
    ) as system:
        yield system, await system.spawn("bench")


async def measured(system: System, body: Callable[[], Awaitable[Any]]) -> Sample:
    """Wall time of ``body`` and the counters it moved (a statistics delta)."""
    before = system.statistics()
    elapsed = stopwatch()
    await body()
    seconds = elapsed()
    return Sample(seconds, stats_counters(system.statistics().delta(before)))


async def read_mapped(proc: UserProcess, path: str, sink: memoryview) -> int:
    """The file library's ordinary read: bytes come out of the mapping into the caller's buffer."""
    async with await proc.open(path, "rb") as f:
        return await f.readinto(sink)


async def read_view(proc: UserProcess, path: str, sink: memoryview) -> int:
    """Zero copies at all: map the whole file and touch one byte per page, as a parser would."""
    async with await proc.open(path, "rb") as f:
        view = await f.view(0, f.size)
        sum(view[i] for i in range(0, len(view), PAGE))
        length = len(view)
        view.release()
        return length


async def read_legacy(proc: UserProcess, path: str, sink: memoryview, chunk: int) -> int:
    """The legacy copying ``Read`` syscall, ``chunk`` bytes at a time (every byte counted)."""
    async with await proc.open(path, "rb") as f:
        size, pos = f.size, 0
        while pos < size:
            data: Data = await proc.syscall(Read(f.handle, pos, min(chunk, size - pos)), Data)
            if not data.data:
                break
            sink[pos : pos + len(data.data)] = data.data
            pos += len(data.data)
        return pos


def legacy_reader(chunk: int) -> Reader:
    async def read(proc: UserProcess, path: str, sink: memoryview) -> int:
        return await read_legacy(proc, path, sink, chunk)

    return read


async def cold_read(
    image: Image,
    path: str,
    reader: Reader = read_mapped,
    *,
    driver: str = "nvme",
    verify: bool = True,
    **options: Any,
) -> Sample:
    """Boot a fresh system, time open + read all + close of ``path``, check the bytes."""
    expected = image.files[path]
    with warm_sink(len(expected)) as sink:
        boot_clock = stopwatch()
        async with booted(image.path, driver=driver, **options) as (system, proc):
            await anyio.to_thread.run_sync(system.memory.wait_populated)  # boot's cost
            boot_s = boot_clock()  # up to warm RAM: the read's DMA lands in touched frames
            count: list[int] = []
            sample = await measured(system, lambda: _collect(reader(proc, path, sink), count))
            heap = cache_heap_per_page(system)
        same = not verify or sink == expected
    if count[0] != len(expected) or not same:
        raise WrongData(
            f"{image.path}::{path} read back {count[0]} bytes that differ from the file"
        )
    extra = {} if heap is None else {"cache_heap_per_page": heap}
    return Sample(sample.seconds, {**sample.counters, "boot_s": boot_s, **extra})


def cache_heap_per_page(system: System) -> float | None:
    """Bytes of Python heap the disc cache's table takes per cached page (None: no cache)."""
    try:
        core = system.server("cache").core  # type: ignore[attr-defined]
    except (KeyError, LookupError):
        return None
    pages = core.census().frames
    return core.heap_bytes() / pages if pages else None


@contextmanager
def warm_sink(size: int) -> Iterator[memoryview]:
    """Page-aligned memory with every page touched before any clock starts.

    The host ``preadv`` side reads into such memory too: a fresh ``bytearray``
    of 32 MiB would add the host kernel's first-touch faults and zeroing of the
    destination (about 0.8 ms per MiB here) to the file system's figure.
    """
    buf = mmap.mmap(-1, max(size, PAGE))
    buf[:] = bytes(len(buf))
    view = memoryview(buf)[:size]
    try:
        yield view
    finally:
        view.release()
        buf.close()


async def _collect(read: Awaitable[int], out: list[int]) -> None:
    out.append(await read)
