"""``microkernel bench``: run every benchmark, print a table of figures and ratios, write JSON.

The figures are only good for comparing the sides of one run on one machine,
so the table leads with ratios (every ``"X/Y"`` is median time of X over
median time of Y from the same run) and shows copies as counted by the
system's ``bytes_copied``, never estimated. The benchmarks themselves live in
``clients.benchmarks``; this module is the command and its report.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

import microkernel
from clients.benchmarks.harness import (
    FULL,
    QUICK,
    BenchResult,
    NoProgress,
    Progress,
    Settings,
    SideResult,
    stopwatch,
)
from clients.benchmarks.suite import run_suite, select


class Report(msgspec.Struct, kw_only=True):
    """The JSON document of ``--json FILE``."""

    version: str
    created: str
    wall_s: float
    settings: Settings
    machine: dict[str, str]
    benchmarks: list[BenchResult]


class BarProgress:
    """A rich progress bar on stderr: one line per benchmark, steps = samples taken."""

    def __init__(self, bar: RichBar) -> None:
        self.bar = bar
        self.task: TaskID | None = None

    def begin(self, name: str, total: int) -> None:
        self.task = self.bar.add_task(name, total=total)

    def advance(self) -> None:
        if self.task is not None:
            self.bar.advance(self.task)


@contextmanager
def progress_display() -> Iterator[Progress]:
    """A bar when a person watches stderr; silence in pipes, CI logs and tests."""
    if not sys.stderr.isatty():
        yield NoProgress()
        return
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with RichBar(*columns, console=Console(stderr=True), transient=True) as bar:
        yield BarProgress(bar)


def machine() -> dict[str, str]:
    """Enough about the machine to know which runs may be compared with each other."""
    try:
        uv = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uv = "not installed"
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": str(os.cpu_count()),
        "uvloop": uv,
    }


# ------------------------------------------------------------------ formatting
def seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.1f} µs"


def nbytes(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    if value >= 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value:.0f}"


def first_line(text: str, limit: int = 160) -> str:
    """Table cells stay one line; the whole story is in the JSON and on stderr."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def count(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def figure(value: float) -> str:
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def spread(side: SideResult) -> str:
    """Max minus min as a share of the median: how far to trust the digits."""
    if len(side.samples_s) < 2 or side.median_s <= 0:
        return ""
    return f"±{(side.max_s - side.min_s) / side.median_s * 50:.0f}%"


def _side_row(side: SideResult) -> list[str]:
    c = side.counters
    return [
        side.name,
        seconds(side.median_s),
        spread(side),
        nbytes(c.get("bytes_copied")),
        count(c.get("syscalls")),
        count(c.get("messages")),
        seconds(c["boot_s"]) if "boot_s" in c else "",
    ]


def sides_table(results: Sequence[BenchResult]) -> Table:
    table = Table(title="microkernel bench: medians of alternating repetitions")
    table.add_column("benchmark")
    table.add_column("side")
    for header in ("median", "spread", "copied/run", "syscalls/run", "messages/run", "boot"):
        table.add_column(header, justify="right")
    for result in results:
        if result.skipped is not None:
            table.add_row(result.name, f"[yellow]skipped: {first_line(result.skipped)}[/]")
            continue
        for i, side in enumerate(result.sides):
            table.add_row(result.name if i == 0 else "", *_side_row(side), end_section=False)
        table.add_section()
    return table


def ratios_table(results: Sequence[BenchResult]) -> Table:
    table = Table(title='ratios ("X/Y" = time X / time Y, same run) and derived figures')
    table.add_column("benchmark")
    table.add_column("ratio or figure")
    table.add_column("value", justify="right")
    for result in results:
        rows = [(k, f"{v:.2f}×") for k, v in result.ratios.items()]
        rows += [(k, figure(v)) for k, v in result.figures.items()]
        for i, (key, value) in enumerate(rows):
            table.add_row(result.name if i == 0 else "", key, value)
        if rows:
            table.add_section()
    return table


def print_report(report: Report, console: Console) -> None:
    console.print(sides_table(report.benchmarks))
    console.print(ratios_table(report.benchmarks))
    for result in report.benchmarks:
        for note in result.notes:
            console.print(f"{result.name}: {note}", highlight=False)
    settings = msgspec.structs.asdict(report.settings)
    console.print(f"wall time {seconds(report.wall_s)}; settings:", highlight=False)
    console.print(" ".join(f"{k}={v}" for k, v in settings.items()), highlight=False)


# --------------------------------------------------------------------- command
async def bench(settings: Settings, names: Sequence[str], progress: Progress) -> Report:
    """Run the benchmarks in a temporary directory (images and traces vanish afterwards)."""
    elapsed = stopwatch()
    with tempfile.TemporaryDirectory(prefix="microkernel-bench-") as tmp:
        results = await run_suite(settings, names, Path(tmp), progress)
    return Report(
        version=microkernel.__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        wall_s=elapsed(),
        settings=settings,
        machine=machine(),
        benchmarks=results,
    )


async def cli_bench(args: argparse.Namespace) -> int:
    """Exit 0 when every benchmark ran or was skipped for a stated reason, 1 if one failed.

    ``args.bench_settings`` (no command-line spelling) lets tests run the real
    command on a tiny configuration.
    """
    names = select(args.only)
    settings: Settings = getattr(args, "bench_settings", None) or (QUICK if args.quick else FULL)
    with progress_display() as progress:
        report = await bench(settings, names, progress)
    print_report(report, Console(width=None if sys.stdout.isatty() else 132))
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    for result in report.benchmarks:
        if result.error:
            print(f"microkernel bench: {result.name} failed:\n{result.error}", file=sys.stderr)
    return 1 if any(r.error for r in report.benchmarks) else 0
