"""Several processes at once on a cache far smaller than their files: evictions, give-backs."""

from __future__ import annotations

import random

import anyio
import pytest

import microkernel
from clients.process import UserProcess
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype
from tests.e2e.model import append_random, truncate_random

pytestmark = pytest.mark.anyio


async def _worker(
    proc: UserProcess, rng: random.Random, model: dict[str, bytes], errors: list[str]
) -> None:
    for step in range(40):
        path = f"/{proc.name}-{rng.randrange(3)}.bin"
        op = rng.choice(["write", "append", "read", "view", "truncate", "shared"])
        if op == "write" or (op != "shared" and path not in model):
            data = rng.randbytes(rng.choice([0, 10, 5000, 70_000, 300_000]))
            await proc.write_file(path, data)
            model[path] = data
        elif op == "append":
            await append_random(proc, rng, model, path, 30_000)
        elif op == "truncate":
            await truncate_random(proc, rng, model, path, 20_000)
        else:
            path = "/shared.bin" if op == "shared" else path
            async with await proc.open(path, "rb") as f:
                data = bytes(await f.view(0)) if op == "view" else await f.read()
            if data != model[path]:
                errors.append(f"{proc.name} step {step}: {op} {path} gave {len(data)} bytes")


async def test_processes_race_through_a_tiny_cache(make_image: ImageFactory) -> None:
    image = make_image({})
    rng = random.Random(8)
    cfg = SystemConfig(
        memory="32M",
        devices=[DeviceConfig(image=str(image))],
        cache=CacheConfig(pages=600, writeback_interval=0.05),  # 2.3 MiB of cache
    )
    model: dict[str, bytes] = {"/shared.bin": rng.randbytes(2_000_000)}
    errors: list[str] = []
    async with microkernel.boot(config=cfg) as system:
        init = await system.spawn("init")
        await init.write_file("/shared.bin", model["/shared.bin"])
        async with anyio.create_task_group() as tg:
            for k in range(5):
                proc = await system.spawn(f"w{k}")
                tg.start_soon(_worker, proc, random.Random(800 + k), model, errors)
        stats = system.statistics()
    assert errors == []
    assert stats.cache_evictions > 1000
    assert stats.messages_by_type.get("GiveBack", 0) >= 1
    assert stats.bytes_copied == 0
    fsck_ok(image)
    for path, data in model.items():
        assert mtype(image, path) == data, path
