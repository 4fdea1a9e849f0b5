"""Measuring harness: alternating repetitions, medians, ratios, and the result records.

Why alternate: a machine's speed drifts (CPU frequency, other load, the host
page cache warming up). Running every side of a comparison in turn, A B A B,
spreads that drift evenly over the sides, and medians of the repetitions keep
one disturbed run from deciding the figure. Ratios are taken between medians
measured in the same process run, which is the only claim a benchmark on a
shared machine can support.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec

from microkernel.stats import Statistics

MiB = 2**20


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes and repetition counts; ``FULL``, ``QUICK`` and the tests' ``TINY`` below."""

    repetitions: int = 7
    warmup: int = 1
    file_size: int = 16 * MiB
    tiny_file_size: int = 1 * MiB
    tiny_reads: int = 100_000
    legacy_tiny_reads: int = 5_000
    small_files: int = 100
    legacy_chunk: int = 256 * 1024
    image_kib: int = 270_000  # mkfs.fat counts 1 KiB blocks: a ~264 MiB FAT32, 4 KiB clusters
    big_file_size: int = 256 * MiB  # the cold big read
    create_files: int = 1000  # small files created in one directory, then read back
    write_size: int = 64 * MiB  # the big write + fsync
    small_reads: int = 100_000  # ``await f.read(8)`` calls on a mapped part


FULL = Settings()
QUICK = Settings(
    repetitions=3,
    file_size=4 * MiB,
    tiny_reads=20_000,
    legacy_tiny_reads=1_000,
    small_files=40,
    big_file_size=32 * MiB,
    create_files=150,
    write_size=16 * MiB,
    small_reads=20_000,
)
TINY = Settings(
    repetitions=1,
    warmup=0,
    file_size=1 * MiB,
    tiny_file_size=64 * 1024,
    tiny_reads=500,
    legacy_tiny_reads=50,
    small_files=4,
    big_file_size=2 * MiB,
    create_files=6,
    write_size=1 * MiB,
    small_reads=200,
)


class BenchSkipped(Exception):
    """A benchmark (or one side of it) cannot run here; the message says why."""


class Sample(msgspec.Struct, frozen=True):
    """One timed repetition of one side, with the counters it moved."""

    seconds: float
    counters: dict[str, float] = msgspec.field(default_factory=dict)


class SideResult(msgspec.Struct, kw_only=True):
    """One column of a comparison: its samples and their medians."""

    name: str
    median_s: float
    min_s: float
    max_s: float
    samples_s: list[float]
    counters: dict[str, float] = msgspec.field(default_factory=dict)  # medians per run

    @classmethod
    def from_samples(cls, name: str, samples: Sequence[Sample]) -> SideResult:
        times = [s.seconds for s in samples]
        keys = sorted({k for s in samples for k in s.counters})
        return cls(
            name=name,
            median_s=statistics.median(times),
            min_s=min(times),
            max_s=max(times),
            samples_s=times,
            counters={k: statistics.median(s.counters.get(k, 0.0) for s in samples) for k in keys},
        )


class BenchResult(msgspec.Struct, kw_only=True):
    """What one benchmark reports: its sides, the ratios between them, derived figures."""

    name: str
    title: str
    sides: list[SideResult] = msgspec.field(default_factory=list)
    ratios: dict[str, float] = msgspec.field(default_factory=dict)
    figures: dict[str, float] = msgspec.field(default_factory=dict)
    notes: list[str] = msgspec.field(default_factory=list)
    skipped: str | None = None
    error: str | None = None  # the traceback, when a benchmark failed rather than skipped

    def side(self, name: str) -> SideResult:
        for side in self.sides:
            if side.name == name:
                return side
        raise KeyError(f"{self.name}: no side {name!r} (have {[s.name for s in self.sides]})")

    def ratio(self, slow: str, fast: str) -> float:
        """Record ``"slow/fast"`` = median time of ``slow`` / median time of ``fast``.

        One rule for every ratio in the report: above 1 means the side named
        second was faster, by that factor, in this run.
        """
        value = self.side(slow).median_s / self.side(fast).median_s
        self.ratios[f"{slow}/{fast}"] = value
        return value


def paired_difference(first: SideResult, second: SideResult) -> float:
    """Median of ``second[i] - first[i]`` over repetitions taken side by side.

    A small cost on top of a large, drifting one shows better in the pairs
    than in the difference of two medians, because each pair ran back to back.
    """
    return statistics.median(b - a for a, b in zip(first.samples_s, second.samples_s, strict=True))


class Progress(Protocol):
    """What the harness tells the progress display: how many steps, and each one done."""

    def begin(self, name: str, total: int) -> None: ...

    def advance(self) -> None: ...


class NoProgress:
    """Progress display for pipes, logs and tests: says nothing."""

    def begin(self, name: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass


Measure = Callable[[], Awaitable[Sample]]


async def alternate(
    name: str, sides: Sequence[tuple[str, Measure]], settings: Settings, progress: Progress
) -> list[SideResult]:
    """Run the sides A B C A B C ... (warm-up rounds first, discarded); summarise each side."""
    rounds = settings.warmup + settings.repetitions
    progress.begin(name, rounds * len(sides))
    kept: dict[str, list[Sample]] = {label: [] for label, _ in sides}
    for round_no in range(rounds):
        for label, measure in sides:
            sample = await measure()
            if round_no >= settings.warmup:
                kept[label].append(sample)
            progress.advance()
    return [SideResult.from_samples(label, kept[label]) for label, _ in sides]


def stats_counters(delta: Statistics) -> dict[str, float]:
    """The counters a benchmark table shows, from a statistics delta (copies are counted,
    never guessed)."""
    return {
        "bytes_copied": float(delta.bytes_copied),
        "bytes_zero_copy": float(delta.bytes_zero_copy),
        "syscalls": float(delta.syscalls),
        "messages": float(delta.messages_total),
        "disk_read_bytes": float(delta.disk_read_bytes),
        "disk_write_bytes": float(delta.disk_write_bytes),
    }


def stopwatch() -> Callable[[], float]:
    """Start a wall clock; calling the result gives the seconds since."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
