"""Random operation sequences through the whole stack, checked against a model and the oracles."""

from __future__ import annotations

import os
import random

import pytest

import microkernel
from clients.process import UserProcess
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype, run
from tests.e2e.model import append_random, truncate_random

pytestmark = pytest.mark.anyio

NAMES = ["a.txt", "Long Name File.bin", "ünïcødé.dat", "x", "data.log"]
DIRS = ["/", "/sub", "/sub/deeper"]


async def _step(proc: UserProcess, rng: random.Random, files: dict[str, bytes]) -> None:
    op = rng.choice(["write", "write", "append", "truncate", "overwrite", "unlink", "rename"])
    existing = sorted(files)
    if op in ("append", "truncate", "overwrite", "unlink", "rename") and not existing:
        op = "write"
    if op == "write":
        path = rng.choice(DIRS).rstrip("/") + "/" + rng.choice(NAMES)
        data = rng.randbytes(rng.choice([0, 1, 100, 4095, 4096, 4097, 70_000, 300_000]))
        await proc.write_file(path, data)
        files[path] = data
        return
    path = rng.choice(existing)
    if op == "append":
        await append_random(proc, rng, files, path, 20_000)
    elif op == "truncate":
        await truncate_random(proc, rng, files, path, 10_000)
    elif op == "overwrite":
        data = files[path]
        pos = rng.randrange(0, len(data) + 1)
        patch = rng.randbytes(rng.randrange(1, 9000))
        async with await proc.open(path, "r+b") as f:
            f.seek(pos)
            await f.write(patch)
        files[path] = data[:pos] + patch + data[pos + len(patch) :]
    elif op == "unlink":
        await proc.unlink(path)
        del files[path]
    else:
        target = rng.choice(DIRS).rstrip("/") + "/" + rng.choice(NAMES)
        if target.lower() == path.lower():
            return
        await proc.rename(path, target)
        files.pop(target, None)
        for other in [p for p in files if p.lower() == target.lower()]:
            del files[other]
        files[target] = files.pop(path)


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("MK_SEEDS", "1,2,3").split(",")])
async def test_random_operations_match_the_model_and_the_oracles(
    make_image: ImageFactory, seed: int
) -> None:
    rng = random.Random(seed)
    image = make_image({}, aligned=seed % 3 != 0)  # every third seed on the copy path
    files: dict[str, bytes] = {}
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        await proc.mkdir("/sub/deeper", parents=True)
        for _ in range(40):
            await _step(proc, rng, files)
        for path, data in files.items():  # the stack reads back what it wrote
            assert await proc.read_file(path) == data, path
    fsck_ok(image)
    listing = run("mdir", "-/", "-b", "-i", image, "::/").lower()
    for path, data in files.items():
        assert path.lower().lstrip("/") in listing or path.rsplit("/", 1)[1].lower() in listing
        assert mtype(image, path) == data, path
