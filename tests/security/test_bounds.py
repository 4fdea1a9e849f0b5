"""Bounds on what an image claims: a size larger than the cluster chain is clipped at open/stat."""

from __future__ import annotations

from pathlib import Path

import pytest

import microkernel
from tests.e2e.conftest import ImageFactory

pytestmark = pytest.mark.anyio


def claim_size(image: Path, short_name: bytes, size: int) -> None:
    """Overwrite the size field of the (unique) 8.3 directory entry ``short_name``."""
    raw = image.read_bytes()
    at = raw.find(short_name)
    while at % 32:
        at = raw.find(short_name, at + 1)
    assert at > 0, short_name
    with open(image, "r+b") as f:
        f.seek(at + 28)
        f.write(size.to_bytes(4, "little"))


@pytest.mark.parametrize("aligned", [True, False], ids=["zero-copy", "copy-path"])
async def test_an_entry_claiming_4_gib_on_a_2_cluster_chain_reads_the_chain(
    make_image: ImageFactory, aligned: bool
) -> None:
    cluster = 4096 if aligned else 512
    data = bytes(range(256)) * (2 * cluster // 256 - 1)  # needs 2 clusters
    image = make_image({"/big.bin": data}, aligned=aligned)
    claim_size(image, b"BIG     BIN", 0xFFFFFFFF)
    async with microkernel.boot(image=image, memory="32M") as system:
        free_before = system.memory.frames_free
        proc = await system.spawn("reader")
        assert (await proc.stat("/big.bin")).size == 2 * cluster
        async with await proc.open("/big.bin", "rb") as f:
            got = await f.read()
            peak_used = free_before - system.memory.frames_free
        assert got[: len(data)] == data
        assert len(got) == 2 * cluster
        assert peak_used < 64, f"{peak_used} frames taken for a 2-cluster file"
        fat = system.server("fat0")
        problems = fat._volume.problems  # type: ignore[attr-defined]
        assert any("BIG.BIN" in p.upper() and "clipped" in p for p in problems)
