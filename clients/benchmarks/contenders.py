"""The other programs that read a FAT file: mtools' ``mtype``, pyfatfs, and our own worker.

Each runs in a worker thread and times itself there, so the clock measures the
contender and not the event loop's scheduling around it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import anyio.to_thread
import msgspec

import clients
from clients.benchmarks.harness import BenchSkipped, Sample, stopwatch
from clients.benchmarks.images import Image, tool_env
from clients.benchmarks.stack import WrongData
from clients.benchmarks.worker import WorkerReport


def _mtype(image: Path, path: str) -> float:
    with open(os.devnull, "wb") as sink:
        elapsed = stopwatch()
        subprocess.run(
            ["mtype", "-i", str(image), f"::{path}"], stdout=sink, env=tool_env(), check=True
        )
        return elapsed()


async def mtype_read(image: Image, path: str) -> Sample:
    """``mtype -i IMG ::/file > /dev/null``: a whole process, from exec to exit."""
    seconds = await anyio.to_thread.run_sync(_mtype, image.path, path)
    return Sample(seconds)


def pyfatfs_available() -> bool:
    try:
        import pyfatfs.PyFatFS  # noqa: F401
    except ImportError:
        return False
    return True


def _pyfatfs(image: Path, path: str) -> tuple[float, bytes]:
    from pyfatfs.PyFatFS import PyFatFS

    fs = PyFatFS(str(image), read_only=True)  # the mount, like our boot, is not timed
    try:
        elapsed = stopwatch()
        with fs.openbin(path, "rb") as f:
            data: bytes = f.read()
        return elapsed(), data
    finally:
        fs.close()


async def pyfatfs_read(image: Image, path: str) -> Sample:
    """pyfatfs' ``PyFatFS.openbin(...).read()`` on a freshly opened file system."""
    seconds, data = await anyio.to_thread.run_sync(_pyfatfs, image.path, path)
    if data != image.files[path]:
        raise WrongData(f"pyfatfs read other bytes from {image.path}::{path}")
    return Sample(seconds)


def _project_env() -> dict[str, str]:
    """Make ``clients`` importable in the child even when the project is not installed."""
    root = str(Path(clients.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not old else f"{root}{os.pathsep}{old}"}


def _worker(image: Path, path: str, size: int, uvloop: bool) -> bytes:
    args = [sys.executable, "-m", "clients.benchmarks.worker", str(image), path, str(size)]
    done = subprocess.run(
        [*args, *(["--uvloop"] if uvloop else [])],
        capture_output=True,
        env=_project_env(),
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        last = stderr.splitlines()[-1] if stderr else "no output"
        error = RuntimeError(f"worker exited {done.returncode}: {last}")
        error.add_note(stderr)
        raise error
    return done.stdout


async def worker_read(image: Image, path: str, *, uvloop: bool) -> Sample:
    """A cold read timed inside a fresh interpreter, with or without uvloop."""
    out = await anyio.to_thread.run_sync(_worker, image.path, path, len(image.files[path]), uvloop)
    report = msgspec.json.decode(out.splitlines()[-1], type=WorkerReport)
    if uvloop and "uvloop" not in report.loop:
        raise BenchSkipped(f"uvloop was asked for but the worker ran on {report.loop}")
    if report.crc32 != zlib.crc32(image.files[path]):
        raise WrongData(f"worker read other bytes from {image.path}::{path}")
    return Sample(report.seconds, {**report.counters, "boot_s": report.boot_s})


def require_uvloop() -> None:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        raise BenchSkipped("uvloop is not installed (pip install microkernel[fast])") from None


def mtools_available() -> bool:
    return shutil.which("mtype") is not None
