"""Helpers for the shell-tool tests: the real CLI in a subprocess, images made by dosfstools.

Every CLI call boots the whole system, so the tests keep images small, RAM at
64 MiB and calls few.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.oracles import fsck_fat, run_tool

REPO = Path(__file__).resolve().parents[2]
MEMORY = "64M"


def env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout's code first on the path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *([path] if path else [])])}


def cli(
    *args: str | os.PathLike[str], timeout: float = 60, cwd: Path = REPO
) -> subprocess.CompletedProcess[bytes]:
    """``python -m microkernel --memory 64M ARGS...`` from the repository, output captured."""
    argv = [sys.executable, "-m", "microkernel", "--memory", MEMORY, *(os.fspath(a) for a in args)]
    return subprocess.run(
        argv, capture_output=True, cwd=cwd, env=env(), timeout=timeout, check=False
    )


def error(done: subprocess.CompletedProcess[bytes]) -> str:
    """The stderr of a failed call, which must be one line per failure and no traceback."""
    text = done.stderr.decode(errors="replace")
    assert "Traceback" not in text and "ExceptionGroup" not in text, text
    return text


def ok(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    """A CLI call that must succeed; its stderr is the assertion message otherwise."""
    done = cli(*args)
    assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))
    return done


def fat16(path: Path) -> Path:
    """A 16 MiB FAT16 image (2 KiB clusters: the copy path for pages)."""
    done = run_tool("mkfs.fat", "-C", "-F", "16", os.fspath(path), "16384")
    assert done.returncode == 0, done.stderr
    return path


def fat32(path: Path) -> Path:
    """A 132 MiB (sparse) FAT32 image with 4 KiB clusters: aligned, zero-copy for every page."""
    done = run_tool("mkfs.fat", "-C", "-F", "32", "-S", "512", "-s", "8", os.fspath(path), "270000")
    assert done.returncode == 0, done.stderr
    return path


def mtool(*args: str | os.PathLike[str]) -> bytes:
    """An mtools command that must succeed; returns its stdout."""
    done = run_tool(*(os.fspath(a) for a in args))
    assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))
    return done.stdout


def put(image: Path, host: Path, dest: str = "::/") -> None:
    mtool("mcopy", "-s", "-i", image, host, dest)


def listing(image: Path) -> set[str]:
    """Every path mtools sees in the image (directories end with ``/``)."""
    done = run_tool("mdir", "-/", "-b", "-i", os.fspath(image), "::")
    if done.returncode and b"not found" in done.stderr:  # how mdir -b says "empty volume"
        return set()
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return {line.removeprefix("::") for line in done.stdout.decode("utf-8").splitlines()}


def fetch(image: Path, path: str) -> bytes:
    """A file's bytes as mtools reads them."""
    return mtool("mtype", "-i", image, f"::{path}")


def assert_clean(image: Path) -> None:
    """``fsck.fat -n`` accepts the image (a clean unmount leaves no repair to do)."""
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode(errors="replace")


ORACLES = ("mkfs.fat", "fsck.fat", "mtype", "mcopy", "mdir", "mattrib")
