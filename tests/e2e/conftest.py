"""Images for end-to-end tests, made by dosfstools and populated with mtools."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.oracles import require_tool

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

ImageFactory = Callable[..., Path]


def run(*cmd: str | Path) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, env=MTOOLS_ENV, check=False, timeout=60
    )
    if done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}): {done.stderr.decode()}")
    return done.stdout.decode("utf-8", "replace")


def mtype(image: Path, path: str) -> bytes:
    done = subprocess.run(
        ["mtype", "-i", str(image), f"::{path}"],
        capture_output=True,
        env=MTOOLS_ENV,
        check=True,
        timeout=60,
    )
    return done.stdout


def fsck_ok(image: Path) -> None:
    done = subprocess.run(
        ["fsck.fat", "-n", str(image)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


@pytest.fixture
def make_image(tmp_path: Path) -> ImageFactory:
    """``make_image(files={"/a.txt": b"..."}, aligned=True)``: a FAT image made by mkfs.fat.

    Aligned: FAT16, 4 KiB clusters, data region on a 4 KiB boundary (mkfs.fat's
    default alignment). Unaligned: ``-a`` with 512-byte clusters and an odd
    number of reserved sectors, so file pages straddle cache pages.
    """
    require_tool("mkfs.fat", "fsck.fat", "mcopy", "mmd", "mtype")
    counter = iter(range(1000))

    def factory(
        files: dict[str, bytes] | None = None, *, aligned: bool = True, sectors: int = 65536
    ) -> Path:
        image = tmp_path / f"disk{next(counter)}.img"
        if aligned:
            run("mkfs.fat", "-C", "-F", "16", "-s", "8", "-S", "512", image, str(sectors // 2))
        else:
            run("mkfs.fat", "-C", "-F", "16", "-a", "-s", "1", "-R", "3", image, str(sectors // 2))
        for path, data in (files or {}).items():
            parent = path.rsplit("/", 1)[0]
            if parent:
                parts = parent.strip("/").split("/")
                for i in range(1, len(parts) + 1):
                    subprocess.run(
                        ["mmd", "-i", str(image), "::/" + "/".join(parts[:i])],
                        env=MTOOLS_ENV,
                        capture_output=True,
                        check=False,
                    )
            host = tmp_path / "src.bin"
            host.write_bytes(data)
            run("mcopy", "-o", "-i", image, host, f"::{path}")
        return image

    return factory
