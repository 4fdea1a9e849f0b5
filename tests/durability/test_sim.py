"""The deterministic simulator: same seed, same run; virtual time; a bounded torture sweep."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from microkernel import sim
from tests.oracles import require_tool

ROOT = Path(__file__).resolve().parents[2]


def _outcome(seed: int, faults: str = "delay,latency,eio", ops: int = 40) -> sim.Outcome:
    result: sim.Outcome = sim.run(seed, lambda: sim.torture(seed, ops,
                                                            faults=frozenset(faults.split(","))))
    return result


def test_a_seed_replays_the_same_run_message_for_message() -> None:
    require_tool("fsck.fat")
    first, again = _outcome(5), _outcome(5)
    assert first.trace and first.trace == again.trace
    assert first.faults == again.faults and first.failures == again.failures
    assert _outcome(6).trace != first.trace


def test_the_seed_decides_the_order_of_ready_tasks() -> None:
    async def race() -> list[str]:
        order: list[str] = []

        async def task(name: str) -> None:
            for _ in range(5):
                order.append(name)
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            for name in "abc":
                tg.start_soon(task, name)
        return order

    runs = {seed: sim.run(seed, race) for seed in range(6)}
    assert sim.run(3, race) == runs[3]
    assert len({tuple(order) for order in runs.values()}) > 1


def test_time_is_virtual() -> None:
    async def sleeper() -> float:
        with anyio.move_on_after(100):
            await anyio.sleep(1000)  # cancelled at 100 virtual seconds
        await anyio.sleep(0.5)
        return asyncio.get_running_loop().time()

    start = time.monotonic()
    assert 100.5 <= sim.run(1, sleeper) < 100.6
    assert time.monotonic() - start < 5


def test_bounded_sweep_of_seeds_finds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("fsck.fat")
    failed = sim.sweep(1, 15, 40, frozenset({"delay", "latency"}), 3)
    failed += sim.sweep(100, 5, 30, frozenset({"eio", "delay"}), 2)
    out = capsys.readouterr().out
    assert failed == 0, out
    assert out.count(": ok;") == 20


def test_a_failing_seed_prints_the_command_that_replays_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(seed: int, ops: int, **kwargs: object) -> sim.Outcome:
        return sim.Outcome(seed, ops, [], ["model mismatch"], {})

    monkeypatch.setattr(sim, "torture", broken)
    lines: list[str] = []
    assert sim.sweep(42, 1, 17, frozenset({"eio"}), 2, lines.append) == 1
    assert "seed 42: FAILED" in lines[0] and "model mismatch" in lines[1]
    assert lines[2].strip() == "replay: microkernel torture --seed 42 --ops 17 --processes 2 " \
                               "--faults eio"


def test_torture_command_line() -> None:
    require_tool("fsck.fat")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "microkernel", "torture", "--seed", "2",
                           "--ops", "20", "--faults", "delay"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("seed 2: ok;")
