"""The workloads where the system is furthest from its peers: big and warm reads, many
small files, big writes, one small read, and a one-shot command's start-up.

Each is a same-run comparison against what a user would otherwise run (mtools)
and against the host's own floor (``preadv`` of the same bytes from the image
file, a bare interpreter start). The peers run in worker threads and time
themselves, so the clock measures them and not the event loop around them.
Write workloads start every sample on a freshly made image (not timed), so
each repetition does the same work.
"""

from __future__ import annotations

import io
import mmap
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio.to_thread

import microkernel
from clients.benchmarks.harness import BenchSkipped, Sample, stats_counters, stopwatch
from clients.benchmarks.images import Image, payload, require_tools, run_tool, tool_env
from clients.benchmarks.stack import WrongData, booted, measured
from clients.process import UserProcess
from microkernel.boot import System

PAGE = 4096
SMALL_FILE = 4096
WRITE_DIR = "/NEW"


# ------------------------------------------------------------------ host floors
def aligned_buffer(size: int) -> mmap.mmap:
    """Page-aligned anonymous memory: copies into a bytearray run slower (16-byte offset)."""
    return mmap.mmap(-1, max(size, PAGE))


def _host_preadv(image: Path, size: int, buf: mmap.mmap) -> float:
    fd = os.open(image, os.O_RDONLY)
    try:
        elapsed = stopwatch()
        done = os.preadv(fd, [memoryview(buf)[:size]], 0)
        seconds = elapsed()
    finally:
        os.close(fd)
    if done != size:
        raise WrongData(f"host preadv read {done} of {size} bytes from {image}")
    return seconds


async def host_preadv(image: Image, size: int) -> Sample:
    """``size`` bytes of the image file into warm page-aligned memory: no file system at all."""
    buf = aligned_buffer(size)
    buf[:] = b"\1" * len(buf)  # touch every page first, as a warm cache's frames are
    try:
        return Sample(await anyio.to_thread.run_sync(_host_preadv, image.path, size, buf))
    finally:
        buf.close()


def _mtools(*args: str) -> float:
    with open(os.devnull, "wb") as sink:
        elapsed = stopwatch()
        subprocess.run(args, stdout=sink, stderr=sink, env=tool_env(), check=True)
        return elapsed()


async def mtools_timed(*args: str) -> Sample:
    """One mtools process from exec to exit."""
    return Sample(await anyio.to_thread.run_sync(lambda: _mtools(*args)))


# ------------------------------------------------------------------ warm re-read
async def _read_once(proc: UserProcess, path: str, sink: mmap.mmap) -> int:
    async with await proc.open(path, "rb") as f:
        return await f.readinto(memoryview(sink)[: f.size])


async def warm_reread(image: Image, path: str, repetitions: int) -> list[Sample]:
    """One system: read once (cold, discarded), then time ``repetitions`` new-open re-reads."""
    expected = image.files[path]
    sink = aligned_buffer(len(expected))
    samples: list[Sample] = []
    try:
        async with booted(image.path) as (system, proc):
            await anyio.to_thread.run_sync(system.memory.wait_populated)  # boot's cost, not a read's
            await _read_once(proc, path, sink)
            for _ in range(repetitions):
                samples.append(await measured(system, lambda: _read_once(proc, path, sink)))
        if sink[: len(expected)] != expected:
            raise WrongData(f"warm re-read of {image.path}::{path} returned other bytes")
    finally:
        sink.close()
    return samples


# ------------------------------------------------------------------ small files
def fresh_image(path: Path, kib: int, mkfs_args: tuple[str, ...]) -> Path:
    """A new, empty image (made with mkfs.fat, so no contender laid it out)."""
    require_tools("mkfs.fat")
    path.unlink(missing_ok=True)
    run_tool("mkfs.fat", "-C", *mkfs_args, str(path), str(kib))
    return path


async def _writable(image: Path, body: Callable[[System, UserProcess], Awaitable[None]]) -> Sample:
    """Boot read-write on ``image``; time ``body`` and the unmount that makes it durable.

    Peers that write (mcopy) have everything on the image when they exit, so the
    clock stops only once unmount has written back and flushed every dirty page
    (``System.stopped_at``: every server stopped). Freeing the modelled machine's
    RAM afterwards (~70 ms for 256 MiB of populated memfd) is not the workload's.
    """
    async with microkernel.boot(image=image, driver="nvme") as system:
        proc = await system.spawn("bench")
        await anyio.to_thread.run_sync(system.memory.wait_populated)  # boot's cost, not the workload's
        before = system.statistics()
        start = time.perf_counter()
        await body(system, proc)
    if system.stopped_at is None:
        raise RuntimeError("the system did not record when its servers stopped")
    seconds = system.stopped_at - start
    counters = stats_counters(system.statistics().delta(before))
    return Sample(seconds, counters)


def small_payload(i: int) -> bytes:
    return payload(SMALL_FILE, 10_000 + i)


async def create_small_files(
    image: Path, count: int, per_file: list[float] | None = None
) -> Sample:
    """Create ``count`` 4 KiB files in one new directory, then fsync the volume once."""

    async def body(system: System, proc: UserProcess) -> None:
        await proc.mkdir(WRITE_DIR)
        for i in range(count):
            clock = stopwatch()
            async with await proc.open(f"{WRITE_DIR}/F{i:05d}.BIN", "wb") as f:
                await f.write(small_payload(i))
            if per_file is not None:
                per_file.append(clock())
        async with await proc.open(f"{WRITE_DIR}/F00000.BIN", "rb") as f:
            await f.fsync()

    return await _writable(image, body)


def staging_dir(root: Path, count: int) -> Path:
    """The same ``count`` files on the host, for mcopy to copy in one process."""
    staged = root / f"small-{count}"
    if not staged.exists():
        staged.mkdir()
        for i in range(count):
            (staged / f"F{i:05d}.BIN").write_bytes(small_payload(i))
    return staged


def _mcopy_in(image: Path, staged: Path) -> float:
    with open(os.devnull, "wb") as sink:
        elapsed = stopwatch()
        subprocess.run(
            ["mcopy", "-s", "-i", str(image), str(staged), f"::{WRITE_DIR}"],
            stdout=sink,
            stderr=sink,
            env=tool_env(),
            check=True,
        )
        fd = os.open(image, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return elapsed()


async def mcopy_in(image: Path, staged: Path) -> Sample:
    """``mcopy -s DIR ::/NEW`` and an fsync of the image: mtools' create-many-files."""
    return Sample(await anyio.to_thread.run_sync(_mcopy_in, image, staged))


async def read_small_files(image: Path, count: int) -> Sample:
    """Open, read and close every file made by :func:`create_small_files`, checking bytes."""

    async def body(system: System, proc: UserProcess) -> None:
        for i in range(count):
            async with await proc.open(f"{WRITE_DIR}/F{i:05d}.BIN", "rb") as f:
                if await f.read() != small_payload(i):
                    raise WrongData(f"{image}::{WRITE_DIR}/F{i:05d}.BIN read back other bytes")

    return await _writable(image, body)


def _mcopy_out(image: Path, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    return _mtools("mcopy", "-s", "-n", "-i", str(image), f"::{WRITE_DIR}", str(dest))


async def mcopy_out(image: Path, dest: Path) -> Sample:
    """``mcopy -s ::/NEW DEST``: mtools reading every small file out."""
    return Sample(await anyio.to_thread.run_sync(_mcopy_out, image, dest))


# ------------------------------------------------------------------ big write
async def write_fsync(image: Path, size: int) -> Sample:
    """Write ``size`` bytes to a new file in 1 MiB calls, then fsync it."""
    data = payload(size, 77)

    async def body(system: System, proc: UserProcess) -> None:
        async with await proc.open("/BIG.OUT", "wb") as f:
            view = memoryview(data)
            for pos in range(0, size, 2**20):
                await f.write(view[pos : pos + 2**20])
            await f.fsync()

    return await _writable(image, body)


def write_staged(root: Path, size: int) -> Path:
    staged = root / f"big-{size}.bin"
    if not staged.exists():
        staged.write_bytes(payload(size, 77))
    return staged


def _mcopy_file(image: Path, staged: Path) -> float:
    elapsed = stopwatch()
    subprocess.run(
        ["mcopy", "-i", str(image), str(staged), "::/BIG.OUT"],
        env=tool_env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fd = os.open(image, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return elapsed()


async def mcopy_file(image: Path, staged: Path) -> Sample:
    """``mcopy FILE ::/BIG.OUT`` and an fsync of the image."""
    return Sample(await anyio.to_thread.run_sync(_mcopy_file, image, staged))


# ------------------------------------------------------------------ one small read
class FloorReader:
    """The least a Python file object can do for ``await f.read(8)``: slice and advance."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    async def read(self, size: int) -> bytes:
        pos = self._pos
        self._pos = pos + size
        return bytes(self._data[pos : pos + size])

    def seek(self, pos: int) -> None:
        self._pos = pos


async def small_reads_mapped(image: Image, path: str, count: int) -> Sample:
    """``await f.read(8)`` ``count`` times on a part already mapped (hit path only).

    The clock starts once boot's background RAM population has finished: that thread
    would otherwise compete for the CPU with the loop, and it is boot's cost, not a read's.
    """
    async with booted(image.path) as (system, proc), await proc.open(path, "rb") as f:
        await anyio.to_thread.run_sync(system.memory.wait_populated)
        await f.read(8)
        top = max(f.size - 8, 1)
        f.seek(0)

        async def loop() -> None:
            for i in range(count):
                if i * 8 >= top:
                    f.seek(0)
                await f.read(8)

        return await measured(system, loop)


async def small_reads_floor(image: Image, path: str, count: int) -> Sample:
    data = memoryview(image.files[path])
    reader = FloorReader(data)
    top = max(len(data) - 8, 1)
    elapsed = stopwatch()
    for i in range(count):
        if i * 8 >= top:
            reader.seek(0)
        await reader.read(8)
    return Sample(elapsed())


async def small_reads_buffered(image: Image, path: str, count: int) -> Sample:
    """``io.BufferedReader.read(8)`` on a host file with the same bytes (page cache warm)."""
    local = image.path.with_suffix(".one")
    local.write_bytes(image.files[path])
    try:
        with open(local, "rb") as raw:
            f: io.BufferedReader = raw
            top = max(len(image.files[path]) - 8, 1)
            elapsed = stopwatch()
            for i in range(count):
                if i * 8 >= top:
                    f.seek(0)
                f.read(8)
            return Sample(elapsed())
    finally:
        local.unlink(missing_ok=True)


# ------------------------------------------------------------------ start-up
def _command(args: list[str], env: dict[str, str]) -> float:
    elapsed = stopwatch()
    done = subprocess.run(args, capture_output=True, env=env, check=False)
    seconds = elapsed()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr[-300:]!r}")
    return seconds


def project_env() -> dict[str, str]:
    """The child imports this very checkout, installed or not, from cached bytecode.

    ``PYTHONDONTWRITEBYTECODE`` is dropped: an installed package has its ``.pyc``
    files (pip compiles them), so a command a user runs does not compile ~60
    modules from source each time; the untimed warm-up round writes them.
    """
    root = str(Path(microkernel.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root if not old else f"{root}{os.pathsep}{old}"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


async def one_shot_ls(image: Image) -> Sample:
    """``python -m microkernel ls IMG::/``: from exec to exit."""
    args = [sys.executable, "-m", "microkernel", "ls", f"{image.path}::/"]
    return Sample(await anyio.to_thread.run_sync(_command, args, project_env()))


async def bare_interpreter() -> Sample:
    """``python -c pass``: what any Python command pays before its first line."""
    args = [sys.executable, "-c", "pass"]
    return Sample(await anyio.to_thread.run_sync(_command, args, dict(os.environ)))


def require_mtools() -> None:
    if shutil.which("mcopy") is None or shutil.which("mtype") is None:
        raise BenchSkipped("needs mtools (apt-get install mtools)")
