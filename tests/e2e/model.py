"""Operations that change a file through the stack and the in-memory model alike."""

from __future__ import annotations

import random

from clients.process import UserProcess


async def append_random(
    proc: UserProcess, rng: random.Random, model: dict[str, bytes], path: str, most: int
) -> None:
    extra = rng.randbytes(rng.randrange(1, most))
    async with await proc.open(path, "ab") as f:
        await f.write(extra)
    model[path] += extra


async def truncate_random(
    proc: UserProcess, rng: random.Random, model: dict[str, bytes], path: str, beyond: int
) -> None:
    """Shrink or extend (the new bytes read as zero) to a random size."""
    size = rng.randrange(0, len(model[path]) + beyond)
    async with await proc.open(path, "r+b") as f:
        await f.truncate(size)
    model[path] = model[path][:size] + bytes(max(0, size - len(model[path])))
