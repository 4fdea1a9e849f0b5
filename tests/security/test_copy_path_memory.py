"""The copy path (unaligned volume) and memory: a full disk is ENOSPC, and nothing stays held."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path

import pytest

import microkernel
from tests.e2e.conftest import ImageFactory, fsck_ok

pytestmark = pytest.mark.anyio
CHUNK = b"x" * 65536


async def fill(image: Path, memory: str) -> tuple[int | None, dict[str, int], bool]:
    """Write until the disk is full; the errno, the frames held after close, a fresh open ok."""
    async with microkernel.boot(image=image, memory=memory) as system:
        writer = await system.spawn("writer")
        f = await writer.open("/big.bin", "wb")
        err = None
        for _ in range(4096):  # bounded: far more than the disk holds
            try:
                await f.write(CHUNK)
            except OSError as exc:
                err = exc.errno
                break
        with contextlib.suppress(OSError):
            await f.close()
        await writer.exit()
        held = dict(system.memory.statistics().frames_by_owner)
        held.pop("cache", None)
        other = await system.spawn("other")
        try:
            async with await other.open("/small.txt", "wb") as g:
                await g.write(b"still works")
            opened = True
        except OSError:
            opened = False
    return err, held, opened


async def test_filling_an_unaligned_disk_is_enospc_and_frees_everything(
    make_image: ImageFactory,
) -> None:
    image = make_image({}, aligned=False, sectors=16384)  # 8 MiB volume, 64 MiB of memory
    err, held, opened = await fill(image, "64M")
    assert err == errno.ENOSPC
    assert held == {}  # no frame stays with the kernel file driver or a process
    assert opened
    fsck_ok(image)


async def test_a_disk_larger_than_memory_fills_with_enospc_not_enomem(
    make_image: ImageFactory,
) -> None:
    image = make_image({}, aligned=False, sectors=65536)  # 32 MiB volume, 16 MiB of memory
    err, held, opened = await fill(image, "16M")
    assert (err, held, opened) == (errno.ENOSPC, {}, True)
