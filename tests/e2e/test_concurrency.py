"""Several processes at once on a cache far smaller than their files: evictions, give-backs."""

from __future__ import annotations

import random

import anyio
import pytest

import microkernel
from clients.process import UserProcess
from drivers.recording import Recorder, WriteLog, image_after, write_image
from microkernel import sim
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.stats import Statistics
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype
from tests.e2e.model import append_random, truncate_random


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


async def _squeeze(system: microkernel.System, model: dict[str, bytes], errors: list[str]) -> None:
    """One process keeps 2 MB mapped (pinned) while another writes and reads 1.5 MB more.

    600 pages cannot hold both: whatever order the racing left the cache in, the cache
    must ask the VFS to give pages back, and every byte must still read right.
    """
    holder, writer = await system.spawn("holder"), await system.spawn("writer")
    big = bytes(range(256)) * 6000
    async with await holder.open("/shared.bin", "rb") as kept:
        if await kept.read() != model["/shared.bin"]:
            errors.append("squeeze: /shared.bin read wrong before the squeeze")
        await writer.write_file("/squeeze.bin", big)
        model["/squeeze.bin"] = big
        if await writer.read_file("/squeeze.bin") != big:
            errors.append("squeeze: /squeeze.bin read back wrong")
        kept.seek(0)
        if await kept.read() != model["/shared.bin"]:
            errors.append("squeeze: /shared.bin read wrong after the squeeze")


@pytest.mark.parametrize("seed", [8, 9])
def test_processes_race_through_a_tiny_cache(make_image: ImageFactory, seed: int) -> None:
    """Five processes on a cache far smaller than their files: evictions and give-backs.

    The run is on the simulator's loop (``microkernel.sim``): time is virtual and the
    seed orders the ready tasks. On the real clock, how often the cache's periodic
    writeback (every 50 ms) and the VFS's grace periods (20 ms) fired between two
    operations depended on the machine's load: on a loaded machine they cleaned and
    unpinned pages before the cache ran short, so no ``GiveBack`` was ever needed (and a
    give-back round could outlast the cache's 5 s wait). In virtual time each turn of
    the loop costs a microsecond whatever the load, so a seed is the same run on any
    machine, while the seeded order still races the processes against each other.
    """
    image = make_image({})
    rng = random.Random(seed)
    cfg = SystemConfig(
        memory="32M",
        devices=[DeviceConfig(image=str(image), driver="microkernel.sim:SimDisk", name="disk0")],
        cache=CacheConfig(pages=600, writeback_interval=0.05),  # 2.3 MiB of cache
    )
    model: dict[str, bytes] = {"/shared.bin": rng.randbytes(2_000_000)}
    errors: list[str] = []

    async def run() -> tuple[Statistics, WriteLog, int]:
        async with microkernel.boot(config=cfg) as system:
            disk = system.server("disk0")
            assert isinstance(disk, Recorder)
            init = await system.spawn("init")
            await init.write_file("/shared.bin", model["/shared.bin"])
            async with anyio.create_task_group() as tg:
                for k in range(5):
                    proc = await system.spawn(f"w{k}")
                    tg.start_soon(_worker, proc, random.Random(seed * 100 + k), model, errors)
            racing = system.statistics().messages_by_type.get("GiveBack", 0)
            await _squeeze(system, model, errors)
            stats = system.statistics()
        return stats, disk.write_log, racing

    stats, log, racing = sim.run(seed, run)
    write_image(image, image_after(log, len(log.entries)))  # the disk as the run left it
    assert errors == []
    assert stats.cache_evictions > 1000
    assert stats.messages_by_type.get("GiveBack", 0) > racing  # _squeeze needed one
    assert stats.bytes_copied == 0
    fsck_ok(image)
    for path, data in model.items():
        assert mtype(image, path) == data, path
