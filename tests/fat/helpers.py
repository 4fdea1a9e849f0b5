"""Shared helpers for the FAT tests: mounting images, walking trees, asking mtools."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.oracles import mtools_image, run_tool

Tree = dict[str, bytes | None]  # path -> file bytes, or None for a directory


@asynccontextmanager
async def mounted(path: str | os.PathLike[str], *, read_only: bool = False, sector_size: int = 512,
                  partition_start: int = 0) -> AsyncIterator[FatVolume]:
    """Mount an image file; unmount (cleanly) and close on exit."""
    io = FileSectorIO(path, sector_size=sector_size, partition_start=partition_start,
                      read_only=read_only)
    try:
        vol = await FatVolume.mount(io, read_only=read_only)
        try:
            yield vol
        finally:
            await vol.unmount()
    finally:
        io.close()


async def volume_tree(vol: FatVolume, path: str = "/", depth: int = 0) -> Tree:
    """Every file and directory under ``path`` read through the volume (depth-bounded)."""
    assert depth < 32, "directory tree too deep (loop?)"
    out: Tree = {}
    for info in await vol.readdir(path):
        child = f"{path.rstrip('/')}/{info.name}"
        if info.is_dir:
            out[child] = None
            out.update(await volume_tree(vol, child, depth + 1))
        else:
            out[child] = await vol.read(child)
    return out


def mtools_tree(image: str | os.PathLike[str], offset: int = 0) -> Tree:
    """The same tree as mtools sees it: ``mdir -/ -b`` for names, ``mcopy -s`` for contents."""
    img = mtools_image(image, offset)
    listing = run_tool("mdir", "-/", "-b", "-i", img, "::")
    names = listing.stdout.decode("utf-8").splitlines() if listing.returncode == 0 else []
    out: Tree = {}
    with tempfile.TemporaryDirectory() as tmp:
        if names:
            copy = run_tool("mcopy", "-s", "-n", "-i", img, "::*", tmp + "/")
            assert copy.returncode == 0, copy.stderr
        for name in names:
            rel = name.removeprefix("::")
            if rel.endswith("/"):
                out[rel.rstrip("/")] = None
            else:
                out[rel] = Path(tmp, rel.lstrip("/")).read_bytes()
    return out
