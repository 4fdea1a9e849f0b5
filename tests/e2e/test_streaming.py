"""Reads and writes of any size with any cache size: the file library streams.

A request to the cache is bounded (a part, a legacy call); a read or write
larger than the cache (or the window) goes through in pieces.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import microkernel
from tests.e2e.conftest import fsck_ok, mtype
from tests.oracles import require_tool

pytestmark = pytest.mark.anyio

MIB = 1 << 20


def _pattern(size: int) -> bytes:
    block = bytes(range(256)) * 16  # 4 KiB; each MiB gets its own first byte
    return b"".join(bytes([m & 0xFF]) + (block * 256)[1:] for m in range(size // MIB))


async def test_a_file_three_times_the_cache_is_written_and_read_back_exactly(
    tmp_path: Path,
) -> None:
    require_tool("mtype", "fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=96 * MIB, fat=16)
    data = _pattern(48 * MIB)
    async with microkernel.boot(image=image, memory="16M") as system:
        proc = await system.spawn("streamer")
        async with await proc.open("/big.bin", "wb") as f:
            assert await f.write(data) == len(data)
        async with await proc.open("/big.bin", "rb") as f:
            got = await f.read()
        assert len(got) == len(data) and got == data
    fsck_ok(image)
    assert mtype(image, "/big.bin") == data


async def test_legacy_calls_larger_than_the_cache_are_served_in_bounded_pieces(
    tmp_path: Path,
) -> None:
    from servers.vfs.protocol import Data, Read, Write, Written

    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=96 * MIB, fat=16)
    data = _pattern(40 * MIB)
    async with microkernel.boot(image=image, memory="16M") as system:
        proc = await system.spawn("legacy")
        async with await proc.open("/legacy.bin", "w+b") as f:
            wrote: Written = await proc.syscall(Write(f.handle, 0, data), Written)
            assert wrote.count == len(data)
            got: Data = await proc.syscall(Read(f.handle, 0, len(data)), Data)
        assert got.data == data
        assert await proc.read_file("/legacy.bin") == data
