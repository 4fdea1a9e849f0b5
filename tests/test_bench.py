"""``microkernel bench`` machinery on a tiny configuration: structure, never timings.

Performance figures live in the bench itself; here we only check that the
command runs the sides alternately, survives a failing benchmark, and writes
JSON with every name, median and ratio a reader of the report relies on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from clients.bench import cli_bench
from clients.benchmarks import suite
from clients.benchmarks.harness import (
    TINY,
    BenchResult,
    NoProgress,
    Sample,
    Settings,
    SideResult,
    alternate,
    paired_difference,
)
from clients.benchmarks.images import Workspace
from tests.oracles import require_tool


@pytest.mark.anyio
async def test_sides_alternate_and_warmup_is_discarded() -> None:
    calls: list[str] = []

    def side(label: str) -> Any:
        async def measure() -> Sample:
            calls.append(label)
            return Sample(float(len(calls)), {"bytes_copied": 0.0})

        return measure

    settings = Settings(repetitions=3, warmup=1)
    results = await alternate("t", [("A", side("A")), ("B", side("B"))], settings, NoProgress())
    assert calls == ["A", "B"] * 4
    assert [r.samples_s for r in results] == [[3.0, 5.0, 7.0], [4.0, 6.0, 8.0]]
    assert [r.median_s for r in results] == [5.0, 6.0]


def test_paired_difference_pairs_repetitions_in_order() -> None:
    off = SideResult.from_samples("off", [Sample(s) for s in (1.0, 5.0, 2.0)])
    on = SideResult.from_samples("on", [Sample(s) for s in (1.5, 5.1, 2.4)])
    assert paired_difference(off, on) == pytest.approx(0.4)


def test_unknown_benchmark_name_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="tiny-reads"):
        suite.select("tiny-reads,no-such-bench")
    assert suite.select(None) == list(suite.NAMES)
    assert suite.select("uvloop, drivers") == ["drivers", "uvloop"]


@pytest.mark.anyio
async def test_a_failing_benchmark_becomes_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ctx: suite.Context) -> BenchResult:
        raise ExceptionGroup("task group", [ZeroDivisionError("below the file library")])

    monkeypatch.setattr(suite, "BENCHMARKS", (("drivers", broken),))
    ctx = suite.Context(TINY, Workspace(tmp_path, TINY), NoProgress())
    result = await suite.run_one("drivers", ctx)
    assert result.skipped == "failed: ZeroDivisionError: below the file library"
    assert result.error is not None and "ZeroDivisionError" in result.error


def _check_benchmark(entry: dict[str, Any]) -> None:
    assert entry["skipped"] is None, entry.get("error")
    assert entry["sides"], entry["name"]
    for side in entry["sides"]:
        assert side["median_s"] > 0
        assert len(side["samples_s"]) == TINY.repetitions
    assert entry["ratios"]
    assert all(value > 0 for value in entry["ratios"].values())


@pytest.mark.anyio
async def test_bench_command_writes_json(tmp_path: Path) -> None:
    require_tool("mkfs.fat", "mcopy", "mmd", "mtype")
    out = tmp_path / "bench.json"
    args = argparse.Namespace(
        json=str(out), quick=False, only="fat-read-16M,tiny-reads", bench_settings=TINY
    )
    assert await cli_bench(args) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["repetitions"] == TINY.repetitions
    assert [b["name"] for b in report["benchmarks"]] == ["fat-read-16M", "tiny-reads"]
    for entry in report["benchmarks"]:
        _check_benchmark(entry)
    fat_read, tiny = report["benchmarks"]
    assert {"microkernel", "mtools"} <= {s["name"] for s in fat_read["sides"]}
    assert "mtools/microkernel" in fat_read["ratios"]
    assert fat_read["sides"][0]["counters"]["bytes_copied"] == 0  # aligned image: zero-copy
    assert tiny["figures"]["mapping: syscalls per 1000 reads"] == 0
    assert tiny["figures"]["legacy Read: syscalls per 1000 reads"] == 1000


@pytest.mark.anyio
async def test_gap_workloads_run_and_compare_with_their_peers(tmp_path: Path) -> None:
    """The workloads of the performance gaps: every side ran, every ratio is there."""
    require_tool("mkfs.fat", "mcopy", "mmd", "mtype")
    out = tmp_path / "bench.json"
    names = "cold-big,warm-reread,small-files,write-fsync,read8,startup"
    args = argparse.Namespace(json=str(out), quick=False, only=names, bench_settings=TINY)
    assert await cli_bench(args) == 0
    report = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert list(report) == names.split(",")
    for entry in report.values():
        _check_benchmark(entry)
    assert set(report["cold-big"]["ratios"]) == {"microkernel/mtype", "microkernel/host preadv"}
    assert report["cold-big"]["sides"][0]["counters"]["bytes_copied"] == 0
    small = report["small-files"]
    assert {"microkernel create/mcopy in", "microkernel read/mcopy out"} == set(small["ratios"])
    assert small["figures"]["create cost growth (last/first)"] > 0
    write = report["write-fsync"]
    assert write["figures"]["microkernel: bytes written to disk / bytes of file"] >= 1
    assert "microkernel/pure-Python floor" in report["read8"]["ratios"]
    assert "microkernel ls/bare interpreter" in report["startup"]["ratios"]


def test_payloads_beyond_one_randbytes_call_are_whole_and_deterministic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The full run's 256 MiB file once overflowed ``randbytes``; big payloads come in chunks."""
    from clients.benchmarks import images

    monkeypatch.setattr(images, "PAYLOAD_CHUNK", 1000)
    data = images.payload(2500, 7)
    assert len(data) == 2500 and data == images.payload(2500, 7)
    assert data[:1000] != data[1000:2000]
    assert images.payload(999, 7) == images.payload(999, 7)
