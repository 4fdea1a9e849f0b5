"""The benchmarks of the workloads where the system trails its peers most (see ``workloads``).

Each compares, in one run, the system against mtools (what a user would run
instead) and the host's floor (``preadv`` of the same bytes, a bare
interpreter), and derives per-MiB and per-file figures from the same medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from clients.benchmarks import workloads as w
from clients.benchmarks.harness import (
    BenchResult,
    Measure,
    MiB,
    Sample,
    SideResult,
    alternate,
)
from clients.benchmarks.images import ALIGNED_ARGS, BIG, HUGE, TINY
from clients.benchmarks.stack import cold_read

if TYPE_CHECKING:
    from clients.benchmarks.suite import Context


def _mib(n: int) -> str:
    return f"{n / MiB:g} MiB"


TITLES: dict[str, Callable[[Context], str]] = {
    "cold-big": lambda c: (
        f"cold read of a {_mib(c.settings.big_file_size)} file vs mtype and host preadv"
    ),
    "warm-reread": lambda c: (
        f"re-read of a {_mib(c.settings.file_size)} file, same system, new open"
    ),
    "small-files": lambda c: (
        f"{c.settings.create_files} x 4 KiB files created in one directory, then read"
    ),
    "write-fsync": lambda c: (
        f"{_mib(c.settings.write_size)} written in 1 MiB calls + fsync vs mcopy"
    ),
    "read8": lambda c: f"{c.settings.small_reads} x `await f.read(8)` on a mapped part",
    "startup": lambda c: "a one-shot command (`ls IMG::/`) vs a bare interpreter start",
}


async def _compare(ctx: Context, name: str, sides: list[tuple[str, Measure]]) -> BenchResult:
    results = await alternate(name, sides, ctx.settings, ctx.progress)
    return BenchResult(name=name, title=TITLES[name](ctx), sides=results)


def _per_mib(result: BenchResult, size: int) -> None:
    for side in result.sides:
        result.figures[f"{side.name}: ms per MiB"] = side.median_s / (size / MiB) * 1e3


# ------------------------------------------------------------------ cold big read
async def cold_big(ctx: Context) -> BenchResult:
    """Cold read of a big file (fresh boot each sample) against mtype and the host floor."""
    w.require_mtools()
    image = ctx.workspace.huge()
    size = ctx.settings.big_file_size
    sides: list[tuple[str, Measure]] = [
        ("microkernel", partial(cold_read, image, HUGE)),
        ("mtype", partial(w.mtools_timed, "mtype", "-i", str(image.path), f"::{HUGE}")),
        ("host preadv", partial(w.host_preadv, image, size)),
    ]
    result = await _compare(ctx, "cold-big", sides)
    result.ratio("microkernel", "mtype")
    result.ratio("microkernel", "host preadv")
    _per_mib(result, size)
    heap = result.side("microkernel").counters.get("cache_heap_per_page")
    if heap is not None:
        result.figures["microkernel: cache heap bytes per cached page"] = heap
    result.notes.append("microkernel: open+readinto+close after a fresh boot; mtype: whole process")
    return result


# ------------------------------------------------------------------ warm re-read
async def warm_reread(ctx: Context) -> BenchResult:
    """A second open and read of a file the system has cached, against the host floor."""
    image = ctx.workspace.aligned()
    size = ctx.settings.file_size
    samples = await w.warm_reread(image, BIG, ctx.settings.repetitions)
    floor = [await w.host_preadv(image, size) for _ in range(ctx.settings.repetitions)]
    result = BenchResult(
        name="warm-reread",
        title=TITLES["warm-reread"](ctx),
        sides=[
            SideResult.from_samples("microkernel", samples),
            SideResult.from_samples("host preadv", floor),
        ],
    )
    result.ratio("microkernel", "host preadv")
    _per_mib(result, size)
    return result


# ------------------------------------------------------------------ small files
def _fresh(ctx: Context, label: str) -> Path:
    return w.fresh_image(
        ctx.workspace.scratch(f"{label}.img"), ctx.settings.image_kib, ALIGNED_ARGS
    )


async def _prepared(
    ctx: Context,
    label: str,
    fill: Callable[[Path], Awaitable[Sample]],
    measure: Callable[[Path], Awaitable[Sample]],
) -> Sample:
    """A fresh image, filled (not timed), then measured."""
    image = _fresh(ctx, label)
    await fill(image)
    return await measure(image)


async def small_files(ctx: Context) -> BenchResult:
    """Create N 4 KiB files in one directory, and read them back, against mcopy both ways."""
    w.require_mtools()
    n = ctx.settings.create_files
    staged = w.staging_dir(ctx.workspace.root, n)
    out = ctx.workspace.scratch("small-out")
    per_file: list[float] = []
    create = partial(w.create_small_files, count=n, per_file=per_file)
    sides: list[tuple[str, Measure]] = [
        ("microkernel create", lambda: create(_fresh(ctx, "create-mk"))),
        ("mcopy in", lambda: w.mcopy_in(_fresh(ctx, "create-mc"), staged)),
        (
            "microkernel read",
            lambda: _prepared(
                ctx, "read-mk", lambda p: w.mcopy_in(p, staged), lambda p: w.read_small_files(p, n)
            ),
        ),
        (
            "mcopy out",
            lambda: _prepared(
                ctx, "read-mc", lambda p: w.mcopy_in(p, staged), lambda p: w.mcopy_out(p, out)
            ),
        ),
    ]
    result = await _compare(ctx, "small-files", sides)
    result.ratio("microkernel create", "mcopy in")
    result.ratio("microkernel read", "mcopy out")
    _flatness(result, per_file, n)
    return result


def _flatness(result: BenchResult, per_file: list[float], n: int) -> None:
    """Per-file create cost early and late in the directory: flat means no scan of it."""
    runs = [
        per_file[i : i + n] for i in range(0, len(per_file), n) if len(per_file[i : i + n]) == n
    ]
    if not runs:
        return
    head = min(50, max(n // 10, 1))
    first = statistics.median(statistics.median(r[:head]) for r in runs)
    last = statistics.median(statistics.median(r[-head:]) for r in runs)
    result.figures[f"create ms per file, first {head}"] = first * 1e3
    result.figures[f"create ms per file, last {head}"] = last * 1e3
    result.figures["create cost growth (last/first)"] = last / first if first else 0.0


# ------------------------------------------------------------------ big write
async def write_fsync(ctx: Context) -> BenchResult:
    """A big new file written and fsynced, against mcopy of the same bytes plus fsync."""
    w.require_mtools()
    size = ctx.settings.write_size
    staged = w.write_staged(ctx.workspace.root, size)
    sides: list[tuple[str, Measure]] = [
        ("microkernel", lambda: w.write_fsync(_fresh(ctx, "write-mk"), size)),
        ("mcopy", lambda: w.mcopy_file(_fresh(ctx, "write-mc"), staged)),
    ]
    result = await _compare(ctx, "write-fsync", sides)
    result.ratio("microkernel", "mcopy")
    _per_mib(result, size)
    disk = result.side("microkernel").counters.get("disk_write_bytes")
    if disk is not None:
        result.figures["microkernel: bytes written to disk / bytes of file"] = disk / size
    return result


# ------------------------------------------------------------------ one small read
async def read8(ctx: Context) -> BenchResult:
    """The hit path of ``await f.read(8)`` against a pure-Python floor and io.BufferedReader."""
    image = ctx.workspace.aligned()
    n = ctx.settings.small_reads
    sides: list[tuple[str, Measure]] = [
        ("microkernel", partial(w.small_reads_mapped, image, TINY, n)),
        ("pure-Python floor", partial(w.small_reads_floor, image, TINY, n)),
        ("io.BufferedReader", partial(w.small_reads_buffered, image, TINY, n)),
    ]
    result = await _compare(ctx, "read8", sides)
    result.ratio("microkernel", "pure-Python floor")
    result.ratio("microkernel", "io.BufferedReader")
    for side in result.sides:
        result.figures[f"{side.name}: ns per read"] = side.median_s / n * 1e9
    return result


# ------------------------------------------------------------------ start-up
async def startup(ctx: Context) -> BenchResult:
    """A one-shot command from exec to exit against ``python -c pass``."""
    image = ctx.workspace.aligned()
    sides: list[tuple[str, Measure]] = [
        ("microkernel ls", partial(w.one_shot_ls, image)),
        ("bare interpreter", w.bare_interpreter),
    ]
    result = await _compare(ctx, "startup", sides)
    result.ratio("microkernel ls", "bare interpreter")
    return result


BENCHMARKS: tuple[tuple[str, Callable[[Context], Awaitable[BenchResult]]], ...] = (
    ("cold-big", cold_big),
    ("warm-reread", warm_reread),
    ("small-files", small_files),
    ("write-fsync", write_fsync),
    ("read8", read8),
    ("startup", startup),
)
