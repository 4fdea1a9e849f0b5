"""Extracting an archive with a very deep path: the cost per entry must not grow with depth.

Every member is created relative to its parent directory (``MkdirAt`` and
``OpenAt`` by node, as the FUSE bridge does), so an entry at depth 200 costs
what one at depth 20 costs: the extraction is linear in the archive's size.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import microkernel
from clients.benchmarks.harness import Sample
from clients.benchmarks.stack import measured
from clients.process import UserProcess
from servers.fs.protocol import FsInfo
from servers.vfs.protocol import ROOT_NODE, MkdirAt

NAME = "123"  # the shape of the archive that took FUSE more than 20 minutes at depth 126
PAYLOAD = b"x" * 100


def deep_archive(depth: int) -> bytes:
    """A tar of ``depth`` nested directories ``123/123/...`` with a small file in each."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for level in range(1, depth + 1):
            path = "/".join([NAME] * level)
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            member = tarfile.TarInfo(f"{path}/longname-{level}.txt")
            member.size = len(PAYLOAD)
            tar.addfile(member, io.BytesIO(PAYLOAD))
    return out.getvalue()


async def extract(proc: UserProcess, archive: bytes) -> int:
    """Extract relative to each member's parent node; returns the entries made."""
    nodes = {"": ROOT_NODE}
    made = 0
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            parent_path, _, name = member.name.rpartition("/")
            parent = nodes[parent_path]
            if member.isdir():
                made_dir: FsInfo = await proc.syscall(MkdirAt(parent, name), FsInfo)
                nodes[member.name] = made_dir.file_id
            else:
                data = tar.extractfile(member)
                assert data is not None
                async with await proc.open_at(parent, name, "wb") as f:
                    await f.write(data.read())
            made += 1
    return made


async def extract_sample(scratch: Path, depth: int) -> Sample:
    """One timed extraction onto a fresh FAT16 image (made outside the timing)."""
    image = scratch / f"deep-{depth}.img"
    image.unlink(missing_ok=True)
    microkernel.mkfs(image, size="32M", fat=16, cluster_size=4096)
    archive = deep_archive(depth)
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("tar")
        sample = await measured(system, lambda: extract(proc, archive))
    image.unlink(missing_ok=True)
    per_entry = sample.seconds / (2 * depth)
    return Sample(sample.seconds, {**sample.counters, "us per entry": per_entry * 1e6})
