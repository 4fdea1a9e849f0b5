"""The benchmarks of ``microkernel bench``, each a short comparison run by the harness.

Every benchmark returns a ``BenchResult`` whose ratios follow one rule
(``"X/Y"`` = median time of X / median time of Y, measured in the same run).
A benchmark that cannot run here, or that trips over a bug below it, becomes a
row saying so instead of ending the whole run: one broken layer should not
hide the figures of the others.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from clients.benchmarks import contenders, deep, gaps, router
from clients.benchmarks.harness import (
    BenchResult,
    BenchSkipped,
    Measure,
    NoProgress,
    Progress,
    Sample,
    Settings,
    alternate,
    paired_difference,
)
from clients.benchmarks.images import BIG, TINY, Workspace, small_name
from clients.benchmarks.stack import (
    booted,
    cold_read,
    legacy_reader,
    measured,
    read_mapped,
    read_view,
)
from clients.file import File
from clients.process import UserProcess
from servers.vfs.protocol import Data, Read


@dataclass
class Context:
    settings: Settings
    workspace: Workspace
    progress: Progress


BenchFn = Callable[[Context], Awaitable[BenchResult]]


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


# ------------------------------------------------------------------ 1. fat-read
async def fat_read(ctx: Context) -> BenchResult:
    """Our cold read against mtools and pyfatfs on the very same image."""
    image = ctx.workspace.aligned()
    sides: list[tuple[str, Measure]] = [("microkernel", partial(cold_read, image, BIG))]
    notes = ["microkernel: open+read+close after boot (boot_s apart); mtools: whole mtype process"]
    if contenders.mtools_available():
        sides.append(("mtools", partial(contenders.mtype_read, image, BIG)))
    else:
        notes.append("mtools column skipped: mtype not on PATH")
    if contenders.pyfatfs_available():
        sides.append(("pyfatfs", partial(contenders.pyfatfs_read, image, BIG)))
    else:
        notes.append("pyfatfs column skipped: not importable (pip install pyfatfs)")
    result = await _result(ctx, "fat-read-16M", sides, notes)
    for other, _ in sides[1:]:
        result.ratio(other, "microkernel")
    return result


# ------------------------------------------------------------------- 2. drivers
DRIVER_SIDES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("nvme", "nvme", {}),
    ("ahci", "ahci", {}),
    ("ide PIO", "ide", {"mode": "pio"}),
    ("ide DMA", "ide", {"mode": "dma"}),
)


async def drivers(ctx: Context) -> BenchResult:
    """The same cold read through each controller model; PIO pays in counted copies."""
    from drivers.registry import available_drivers

    image = ctx.workspace.aligned()
    present = set(available_drivers())
    sides: list[tuple[str, Measure]] = [
        (label, partial(cold_read, image, BIG, driver=name, **opts))
        for label, name, opts in DRIVER_SIDES
        if name in present
    ]
    missing = [label for label, name, _ in DRIVER_SIDES if name not in present]
    notes = [f"not in drivers/registry.py: {', '.join(missing)}"] if missing else []
    result = await _result(ctx, "drivers", sides, notes)
    for label, _ in sides[1:]:
        result.ratio(label, sides[0][0])
    return result


# -------------------------------------------------------------------- 3. uvloop
async def uvloop(ctx: Context) -> BenchResult:
    """asyncio's loop against uvloop, each sample a fresh interpreter (the loop is per process)."""
    contenders.require_uvloop()
    image = ctx.workspace.aligned()
    sides: list[tuple[str, Measure]] = [
        ("asyncio", partial(contenders.worker_read, image, BIG, uvloop=False)),
        ("uvloop", partial(contenders.worker_read, image, BIG, uvloop=True)),
    ]
    notes = ["nvme cold read timed inside `python -m clients.benchmarks.worker`"]
    result = await _result(ctx, "uvloop", sides, notes)
    result.ratio("asyncio", "uvloop")
    return result


# ------------------------------------------------------------------- 4. tracing
async def _small_files_pass(proc: UserProcess, count: int) -> None:
    """stat, open, read, close each small file: many messages, few bytes."""
    for i in range(count):
        name = small_name(i)
        await proc.stat(name)
        async with await proc.open(name, "rb") as f:
            await f.read()


async def _traced_workload(ctx: Context, trace: Path | None) -> Sample:
    image = ctx.workspace.aligned()
    count = ctx.settings.small_files
    async with booted(image.path, trace=trace) as (system, proc):
        await _small_files_pass(proc, count)  # warm: the timed pass is messages, not disk
        sample = await measured(system, lambda: _small_files_pass(proc, count))
    if trace is not None:
        trace.unlink(missing_ok=True)
    return sample


async def tracing(ctx: Context) -> BenchResult:
    """JSON-lines tracing on against off on a message-heavy workload (small files)."""
    trace = ctx.workspace.scratch("bench-trace.jsonl")
    sides: list[tuple[str, Measure]] = [
        ("trace off", partial(_traced_workload, ctx, None)),
        ("trace on", partial(_traced_workload, ctx, trace)),
    ]
    notes = [
        f"stat+open+read+close of {ctx.settings.small_files} small files, warm cache; "
        "overhead = median of paired (on - off) differences / messages"
    ]
    result = await _result(ctx, "tracing", sides, notes)
    result.ratio("trace on", "trace off")
    off, on = result.side("trace off"), result.side("trace on")
    messages = max(off.counters.get("messages", 0.0), 1.0)
    result.figures["messages per pass"] = messages
    result.figures["overhead per message (µs)"] = paired_difference(off, on) / messages * 1e6
    return result


# ------------------------------------------------------ 5. zero-copy vs legacy
async def zero_copy_vs_legacy(ctx: Context) -> BenchResult:
    """The mapping against the legacy copying ``Read`` syscall, both cold, same file."""
    image = ctx.workspace.aligned()
    chunk = ctx.settings.legacy_chunk
    legacy = f"legacy Read {chunk // 1024}K"
    sides: list[tuple[str, Measure]] = [
        ("mapping readinto", partial(cold_read, image, BIG, read_mapped)),
        ("mapping view", partial(cold_read, image, BIG, read_view, verify=False)),
        (legacy, partial(cold_read, image, BIG, legacy_reader(chunk))),
    ]
    notes = ["view: no byte leaves the mapping (one byte per page touched)"]
    result = await _result(ctx, "zero-copy-vs-legacy", sides, notes)
    result.ratio(legacy, "mapping readinto")
    result.ratio(legacy, "mapping view")
    return result


# ---------------------------------------------------------------- 6. tiny reads
async def _tiny_mapped(f: File, ops: Sequence[tuple[int, int]]) -> None:
    for offset, size in ops:
        f.seek(offset)
        await f.read(size)


async def _tiny_legacy(proc: UserProcess, f: File, ops: Sequence[tuple[int, int]]) -> None:
    for offset, size in ops:
        await proc.syscall(Read(f.handle, offset, size), Data)


def _tiny_ops(ctx: Context) -> list[tuple[int, int]]:
    """Reads of 1..16 bytes at random offsets (seeded: both sides get the same ones)."""
    rng = random.Random(7)
    top = ctx.settings.tiny_file_size - 16
    return [(rng.randrange(top), rng.randint(1, 16)) for _ in range(ctx.settings.tiny_reads)]


async def tiny_reads(ctx: Context) -> BenchResult:
    """The font-parser pattern: once the file is mapped, tiny reads need no message at all."""
    image = ctx.workspace.aligned()
    ops = _tiny_ops(ctx)
    legacy_ops = ops[: ctx.settings.legacy_tiny_reads]
    async with booted(image.path) as (system, proc), await proc.open(TINY, "rb") as f:
        await f.view(0, f.size)  # the first pass: everything mapped from here on
        sides: list[tuple[str, Measure]] = [
            ("mapping", partial(measured, system, partial(_tiny_mapped, f, ops))),
            ("legacy Read", partial(measured, system, partial(_tiny_legacy, proc, f, legacy_ops))),
        ]
        result = await _result(ctx, "tiny-reads", sides, [])
    _tiny_figures(result, {"mapping": len(ops), "legacy Read": len(legacy_ops)})
    return result


def _tiny_figures(result: BenchResult, counts: dict[str, int]) -> None:
    """Per-read figures: the two sides do different numbers of reads (legacy is slow)."""
    per_read: dict[str, float] = {}
    for side in result.sides:
        n = counts[side.name]
        per_read[side.name] = side.median_s / n * 1e9
        result.figures[f"{side.name}: ns per read"] = per_read[side.name]
        result.figures[f"{side.name}: syscalls per 1000 reads"] = (
            side.counters.get("syscalls", 0.0) / n * 1000
        )
    result.ratios["legacy Read/mapping (per read)"] = per_read["legacy Read"] / per_read["mapping"]
    result.notes.append(f"reads: mapping {counts['mapping']}, legacy {counts['legacy Read']}")


# ------------------------------------------------------- 7. aligned vs unaligned
async def aligned_vs_unaligned(ctx: Context) -> BenchResult:
    """The same file on an aligned volume (zero-copy) and on ``mkfs.fat -a -R 33`` (copy path)."""
    aligned, unaligned = ctx.workspace.aligned(), ctx.workspace.unaligned()
    sides: list[tuple[str, Measure]] = [
        ("aligned", partial(cold_read, aligned, BIG)),
        ("unaligned", partial(cold_read, unaligned, BIG)),
    ]
    result = await _result(ctx, "aligned-vs-unaligned", sides, ["unaligned: mkfs.fat -a -R 33"])
    result.ratio("unaligned", "aligned")
    return result


# ---------------------------------------------------------------- 8. router
async def router_round_trip(ctx: Context) -> BenchResult:
    """A routed, msgspec-encoded call against a bare anyio memory-stream round trip."""
    sides: list[tuple[str, Measure]] = [
        ("routed call", router.routed_round_trips),
        ("bare streams", router.bare_round_trips),
    ]
    notes = [f"time per round trip, {router.ROUND_TRIPS} round trips per repetition"]
    result = await _result(ctx, "router", sides, notes)
    result.ratio("routed call", "bare streams")
    for side in result.sides:
        result.figures[f"{side.name} us"] = side.median_s * 1e6
    return result


# ------------------------------------------------------------- 9. deep path
DEEP_SHALLOW, DEEP_DEEP = 20, 200


async def deep_path(ctx: Context) -> BenchResult:
    """Extracting a tar with a 200-level deep path against a 20-level one (per entry)."""
    scratch = ctx.workspace.scratch("")
    sides: list[tuple[str, Measure]] = [
        (f"depth {DEEP_SHALLOW}", partial(deep.extract_sample, scratch, DEEP_SHALLOW)),
        (f"depth {DEEP_DEEP}", partial(deep.extract_sample, scratch, DEEP_DEEP)),
    ]
    notes = ["linear in size: time per entry stays flat as the depth grows tenfold"]
    result = await _result(ctx, "deep-path", sides, notes)
    result.ratio(f"depth {DEEP_DEEP}", f"depth {DEEP_SHALLOW}")
    for side in result.sides:
        result.figures[f"{side.name} us/entry"] = side.counters.get("us per entry", 0.0)
    return result


# ------------------------------------------------------------------ the suite
def _title(name: str, settings: Settings) -> str:
    if name in gaps.TITLES:
        return gaps.TITLES[name](Context(settings, Workspace(Path("."), settings), NoProgress()))
    size, tiny = _mib(settings.file_size), _mib(settings.tiny_file_size)
    return {
        "fat-read-16M": f"cold read of a {size} file: microkernel vs mtools vs pyfatfs",
        "drivers": f"cold read of a {size} file per driver",
        "uvloop": f"cold read of a {size} file, asyncio loop vs uvloop (fresh process each)",
        "tracing": "message-heavy workload with JSON-lines tracing off/on",
        "zero-copy-vs-legacy": f"cold read of a {size} file: mapping vs legacy Read syscall",
        "tiny-reads": f"1..16-byte reads at random offsets in a {tiny} file, warm",
        "aligned-vs-unaligned": f"cold read of a {size} file, aligned vs copy-path volume",
        "router": "one request/reply: routed msgspec call vs bare anyio streams",
        "deep-path": f"extract a tar with a {DEEP_DEEP}-level deep path vs {DEEP_SHALLOW} levels",
    }[name]


BENCHMARKS: tuple[tuple[str, BenchFn], ...] = (
    ("fat-read-16M", fat_read),
    ("drivers", drivers),
    ("uvloop", uvloop),
    ("tracing", tracing),
    ("zero-copy-vs-legacy", zero_copy_vs_legacy),
    ("tiny-reads", tiny_reads),
    ("aligned-vs-unaligned", aligned_vs_unaligned),
    ("router", router_round_trip),
    ("deep-path", deep_path),
    *gaps.BENCHMARKS,
)
NAMES = tuple(name for name, _ in BENCHMARKS)


async def _result(
    ctx: Context, name: str, sides: Sequence[tuple[str, Measure]], notes: list[str]
) -> BenchResult:
    """Run the sides alternately and wrap their summaries with the benchmark's title."""
    results = await alternate(name, sides, ctx.settings, ctx.progress)
    return BenchResult(name=name, title=_title(name, ctx.settings), sides=results, notes=notes)


def select(only: str | None) -> list[str]:
    """Benchmark names from ``--only a,b`` (all when absent); unknown names are a usage error."""
    if not only:
        return list(NAMES)
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in NAMES]
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}"
        )
    return [n for n in NAMES if n in wanted]


async def run_one(name: str, ctx: Context) -> BenchResult:
    """One benchmark; a skip or a failure becomes a result that says what happened."""
    fn = dict(BENCHMARKS)[name]
    try:
        return await fn(ctx)
    except BenchSkipped as exc:
        return BenchResult(name=name, title=_title(name, ctx.settings), skipped=str(exc))
    except Exception as exc:
        return BenchResult(
            name=name,
            title=_title(name, ctx.settings),
            skipped=f"failed: {_describe(exc)}",
            error="".join(traceback.format_exception(exc)),
        )


def _describe(exc: BaseException) -> str:
    """The innermost real error: task groups wrap one failure in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


async def run_suite(
    settings: Settings, names: Sequence[str], root: Path, progress: Progress
) -> list[BenchResult]:
    """Run the named benchmarks in order, with images made under ``root``."""
    ctx = Context(settings, Workspace(root, settings), progress)
    return [await run_one(name, ctx) for name in names]
