"""The power-cut workload: record a workload's device writes, with a journal of its fsyncs.

A workload of creates, appends, truncates, renames, mkdir/rmdir, unlinks and
fsyncs runs through the whole system on a recording ramdisk
(:mod:`drivers.recording`). Each step notes the log position where it began
and, for an fsync, where it ended; so for any crash state we know which files
were fsynced and left alone since, and what they must contain. The checks of
each crash state are :mod:`microkernel.crashcheck`.
"""

from __future__ import annotations

import random
from pathlib import Path

import microkernel
from clients.process import UserProcess
from drivers.recording import Recorder
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.crashcheck import Journal, Tally, check_all

__all__ = ["DRIVER", "Journal", "Tally", "check_all", "record", "workload"]

DRIVER = "drivers.recording:RecordingRamDisk"


async def workload(proc: UserProcess, journal: Journal, rng: random.Random,
                   ops: int) -> dict[str, bytes]:
    """Random creates, appends, truncates, renames (of files, and of directories into
    another parent), mkdir/rmdir, unlinks, fsyncs; returns every file's content at the end."""
    files: dict[str, bytes] = {}
    dirs = ["/"]
    for step in range(ops):
        choice = rng.random()
        if choice < 0.12 and len(dirs) < 4:
            path = f"/d{step}"
            journal.touch()
            await proc.mkdir(path)
            dirs.append(path)
        elif choice < 0.18 and len(dirs) > 1:
            path = rng.choice(dirs[1:])
            if any(f.startswith(path + "/") for f in [*files, *dirs]):
                continue
            journal.touch()
            await proc.rmdir(path)
            dirs.remove(path)
        elif choice < 0.45 or not files:
            parent = rng.choice(dirs).rstrip("/")
            path = f"{parent}/f{step}.bin"
            data = _payload(rng, step)
            await _write(proc, journal, path, "wb", data, rng.random() < 0.6)
            files[path] = data
        elif choice < 0.65:
            path = rng.choice(sorted(files))
            data = _payload(rng, step)
            await _write(proc, journal, path, "ab", data, rng.random() < 0.6)
            files[path] += data
        elif choice < 0.75:
            path = rng.choice(sorted(files))
            size = rng.randrange(len(files[path]) + 1)
            journal.touch(path)
            async with await proc.open(path, "r+b") as f:
                await f.truncate(size)
                if rng.random() < 0.6:
                    await f.fsync()
                    journal.fsynced(path, files[path][:size])
            files[path] = files[path][:size]
        elif choice < 0.87 and len(dirs) > 2 and rng.random() < 0.25:
            await _move_dir(proc, journal, rng, step, files, dirs)
        elif choice < 0.87:
            src = rng.choice(sorted(files))
            dst = f"{rng.choice(dirs).rstrip('/')}/r{step}.bin"
            if rng.random() < 0.3 and len(files) > 1:
                dst = rng.choice([f for f in sorted(files) if f != src])
            journal.touch(src, dst)
            await proc.rename(src, dst)
            files[dst] = files.pop(src)
        else:
            path = rng.choice(sorted(files))
            journal.touch(path)
            await proc.unlink(path)
            del files[path]
    return files


async def _move_dir(proc: UserProcess, journal: Journal, rng: random.Random, step: int,
                    files: dict[str, bytes], dirs: list[str]) -> None:
    """Move a directory (and what is in it) into another parent: its '..' changes too."""
    src = rng.choice(dirs[1:])
    parents = [d for d in dirs if d != src and not d.startswith(src + "/")]
    dst = f"{rng.choice(parents).rstrip('/')}/m{step}"
    inside = [f for f in files if f.startswith(src + "/")]
    journal.touch(*inside, *(dst + f[len(src):] for f in inside))
    await proc.rename(src, dst)
    for f in inside:
        files[dst + f[len(src):]] = files.pop(f)
    dirs[:] = [dst + d[len(src):] if d == src or d.startswith(src + "/") else d for d in dirs]


def _payload(rng: random.Random, step: int) -> bytes:
    size = rng.choice([100, 3000, 5000, 9000, 17000, 40000])
    return bytes([(step * 7 + 1) & 0xFF]) * size


async def _write(proc: UserProcess, journal: Journal, path: str, mode: str, data: bytes,
                 sync: bool) -> None:
    journal.touch(path)
    async with await proc.open(path, mode) as f:
        await f.write(data)
        if sync:
            await f.fsync()
    if sync:
        whole = await proc.read_file(path)
        journal.fsynced(path, whole)


async def record(image: Path, *, seed: int, ops: int, interval: float | None,
                 memory: str = "48M") -> Journal:
    """Run the workload on ``image`` through the whole system; return its journal and log."""
    cfg = SystemConfig(memory=memory, devices=[DeviceConfig(image=str(image), driver=DRIVER,
                                                            name="disk0")],
                       cache=CacheConfig(writeback_interval=interval))
    async with microkernel.boot(config=cfg) as system:
        drv = system.server("disk0")
        assert isinstance(drv, Recorder)
        log = drv.write_log
        journal = Journal(log)
        proc = await system.spawn("writer")
        files = await workload(proc, journal, random.Random(seed), ops)
    journal.unmounted(files)  # the system is shut down: the volume is unmounted cleanly
    return journal
