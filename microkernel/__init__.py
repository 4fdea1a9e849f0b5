"""A zero-copy microkernel file system, modelled in asyncio.

Public interface (see README.md)::

    import microkernel
    async with microkernel.boot(image="disk.img", driver="nvme", memory=256 * 2**20) as system:
        proc = await system.spawn("reader")
        async with await proc.open("/docs/notes.txt", "rb") as f:
            data = await f.read()
        stats = system.statistics()
    microkernel.mkfs("disk.img", size=64 * 2**20, fat=32, cluster_size=4096)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microkernel.boot import System, boot, run
from microkernel.stats import Statistics
from microkernel.units import parse_size

__version__ = "0.1.0"


def mkfs(
    path: str | Path,
    *,
    size: int | str,
    fat: int | None = None,
    cluster_size: int = 4096,
    sector_size: int = 512,
    label: str = "NO NAME",
    **options: Any,
) -> None:
    """Make a FAT12/16/32 image (data region 4 KiB aligned unless ``unaligned=True``)."""
    from servers.fat.mkfs import make_filesystem

    make_filesystem(
        str(path),
        parse_size(size),
        fat=fat,
        cluster_size=cluster_size,
        sector_size=sector_size,
        label=label,
        **options,
    )


__all__ = ["Statistics", "System", "boot", "mkfs", "parse_size", "run"]
