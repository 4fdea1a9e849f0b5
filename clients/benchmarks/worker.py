"""One cold read in a fresh interpreter: ``python -m clients.benchmarks.worker IMG PATH SIZE [--uvloop]``.

The event loop is chosen when a program starts, so comparing asyncio's loop
with uvloop fairly means a fresh process per sample, each doing the same work.
The worker prints one JSON object: the read's seconds, its counters, the loop
class that really ran (so a silently missing uvloop cannot pass as a result),
and a CRC of the bytes for the parent to check.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread
import msgspec

import microkernel
from clients.benchmarks.harness import stopwatch
from clients.benchmarks.stack import booted, measured, read_mapped, warm_sink


class WorkerReport(msgspec.Struct, frozen=True):
    seconds: float
    counters: dict[str, float]
    loop: str
    crc32: int
    size: int
    boot_s: float


async def _read(image: Path, path: str, size: int, driver: str) -> WorkerReport:
    with warm_sink(size) as sink:
        boot_clock = stopwatch()
        async with booted(image, driver=driver) as (system, proc):
            await anyio.to_thread.run_sync(system.memory.wait_populated)  # boot's cost
            boot_s = boot_clock()
            sample = await measured(system, lambda: read_mapped(proc, path, sink))
        crc32 = zlib.crc32(sink)
    loop = type(asyncio.get_running_loop())
    return WorkerReport(
        seconds=sample.seconds,
        counters=sample.counters,
        loop=f"{loop.__module__}.{loop.__qualname__}",
        crc32=crc32,
        size=size,
        boot_s=boot_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.benchmarks.worker")
    parser.add_argument("image", type=Path)
    parser.add_argument("path")
    parser.add_argument("size", type=int, help="the file's size (a buffer made before timing)")
    parser.add_argument("--driver", default="nvme")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    report: WorkerReport = microkernel.run(
        lambda: _read(args.image, args.path, args.size, args.driver), use_uvloop=args.uvloop
    )
    sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
