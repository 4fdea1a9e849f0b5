"""A deterministic simulator: one seed decides the schedule, the clock and the faults.

* **Scheduler.** :class:`SimLoop` is an asyncio loop whose ready callbacks run
  in an order drawn from the seed (each turn of the loop permutes the ready
  queue), so interleavings of servers and processes are explored, and
  replayed, by seed.
* **Virtual clock.** ``loop.time()`` is virtual: when nothing is ready the
  clock jumps to the next timer, so timeouts, writeback intervals and grace
  periods cost no real time and land identically on every run.
* **Devices without threads.** :class:`SimDisk` is the recording ramdisk
  (:mod:`drivers.recording`) doing its "DMA" inline instead of in worker
  threads, with seeded faults per command: EIO on writes, latency.
* **Message faults.** Per message type, a seeded delay before delivery.
* **Power cuts.** Any point of the recorded write log (and reorderings and torn
  writes inside a flush epoch) is a crash image, checked with
  :mod:`microkernel.crashcheck`.

:func:`torture` runs random workloads from several processes, each in its own
directory, checks every result against a model, then cuts power at random
points of the log and checks those images. The same seed gives the same run,
message for message: :attr:`Outcome.trace` lists every delivered message
(source, destination, type, id, correlation, kind, reply-to), without wall
times. Not yet simulated: dropped replies and server crash/restart.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import heapq
import random
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from drivers.base import DmaPlan
from drivers.errors import MediumError
from drivers.protocol import Flush, IoDone
from drivers.recording import RecordingRamDisk, crash_states
from microkernel.ipc import Envelope, Router
from microkernel.server import handles

FAULT_KINDS = ("delay", "latency", "eio")
TraceEntry = tuple[str, str, str, int, int, int, int]


class SimLoop(asyncio.SelectorEventLoop):
    """An asyncio loop with a seeded order of ready callbacks and a virtual clock."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self._virtual = 0.0

    def time(self) -> float:
        return self._virtual

    def _run_once(self) -> None:
        self._virtual += 1e-6  # each turn costs a microsecond: busy loops still let time pass
        ready: Any = self._ready  # type: ignore[attr-defined]
        if not ready:
            self._jump_to_next_timer()
        elif len(ready) > 1:
            order = list(ready)
            self.rng.shuffle(order)
            ready.clear()
            ready.extend(order)
        super()._run_once()  # type: ignore[misc]

    def _jump_to_next_timer(self) -> None:
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        while scheduled and scheduled[0].cancelled():
            heapq.heappop(scheduled)
        if scheduled:
            self._virtual = max(self._virtual, scheduled[0].when())


class SimDisk(RecordingRamDisk):  # type: ignore[misc,valid-type]
    """The recording ramdisk, DMA inline (no worker threads), with seeded command faults."""

    faults: SimFaults | None = None

    async def _execute(self, plan: DmaPlan, offset: int, *, write: bool, fua: bool) -> None:
        faults = self.faults
        if faults is not None:
            await faults.device_command(write, offset)
        if write:
            self._stage(plan, to_device=True)
        self._dma(plan.views, offset, write, fua)
        if not write:
            self._stage(plan, to_device=False)

    @handles(Flush)
    async def _on_flush(self, env: Envelope, msg: Flush) -> IoDone:
        async with self._command():
            self.flush_backing()
        self._stats["commands"] += 1
        return IoDone(0, 0)


@dataclass(slots=True)
class SimFaults:
    """Which faults a run injects, and how often; every draw comes from the seeded ``rng``."""

    rng: random.Random
    kinds: frozenset[str]
    rate: float = 0.02
    injected: dict[str, int] = field(default_factory=dict)

    def _hit(self, kind: str) -> bool:
        if kind not in self.kinds or self.rng.random() >= self.rate:
            return False
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return True

    async def device_command(self, write: bool, offset: int) -> None:
        if self._hit("latency"):
            await anyio.sleep(self.rng.uniform(0.001, 0.05))
        if write and self._hit("eio"):
            raise MediumError(f"simulated medium error writing byte {offset}")

    async def message(self, env: Envelope) -> None:
        if self._hit("delay"):
            await anyio.sleep(self.rng.uniform(0.0005, 0.02))


def instrument(router: Router, trace: list[TraceEntry], faults: SimFaults | None) -> None:
    """Record every delivered message; delay deliveries as the faults say."""
    account = router._account
    deliver = router.deliver

    def traced(env: Envelope) -> None:
        trace.append((env.src, env.dst, env.type, env.id, env.corr, env.kind, env.reply_to))
        account(env)

    async def delayed(env: Envelope) -> None:
        if faults is not None:
            await faults.message(env)
        await deliver(env)

    router._account = traced  # type: ignore[method-assign]
    router.deliver = delayed  # type: ignore[method-assign]


def run(seed: int, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main`` on a :class:`SimLoop` seeded with ``seed``."""
    return anyio.run(main, backend="asyncio",
                     backend_options={"loop_factory": lambda: SimLoop(seed)})


# ------------------------------------------------------------------ torture
@dataclass(slots=True)
class Outcome:
    seed: int
    ops: int
    trace: list[TraceEntry]
    failures: list[str]
    faults: dict[str, int]
    cut_states: int = 0
    fsynced_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def replay_command(seed: int, ops: int, faults: frozenset[str], processes: int) -> str:
    flags = f" --faults {','.join(sorted(faults))}" if faults else ""
    return f"microkernel torture --seed {seed} --ops {ops} --processes {processes}{flags}"


async def torture(seed: int, ops: int, *, faults: frozenset[str] = frozenset(),
                  processes: int = 3, cuts: int = 12, workdir: Path | None = None) -> Outcome:
    """One simulated run: ``processes`` workers, ``ops`` operations in all, then power cuts."""
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {FAULT_KINDS}")
    if workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return await torture(seed, ops, faults=faults, processes=processes, cuts=cuts,
                                 workdir=Path(tmp))
    from microkernel.crashcheck import Journal, check_states
    from servers.fat.mkfs import make_filesystem

    image = workdir / "disk.img"
    make_filesystem(image, 16 * 2**20, fat=16, volume_id=seed & 0xFFFFFFFF)
    rng = random.Random(seed)
    sim_faults = SimFaults(random.Random(rng.random()), faults) if faults else None
    trace: list[TraceEntry] = []
    failures: list[str] = []
    log, journal = await _workload_run(image, seed, ops, processes, rng, sim_faults, trace,
                                       failures)
    outcome = Outcome(seed, ops, trace, failures, dict(sim_faults.injected) if sim_faults else {})
    if log is None:
        return outcome
    states = list(crash_states(log, random.Random(seed), samples=1))
    chosen = sorted(random.Random(seed + 1).sample(states, min(cuts, len(states))),
                    key=lambda s: (s.durable, s.kind != "prefix"))
    assert isinstance(journal, Journal)
    tally = await check_states(journal, workdir, chosen)
    outcome.cut_states = tally.states
    outcome.fsynced_checked = tally.fsynced_checked
    failures.extend(f"power cut: {f}" for f in tally.failures)
    if tally.damaged or tally.repair_failed or tally.fsynced_lost:
        failures.append(f"power cut: {tally.summary()}")
    return outcome


async def _workload_run(image: Path, seed: int, ops: int, processes: int, rng: random.Random,
                        faults: SimFaults | None, trace: list[TraceEntry],
                        failures: list[str]) -> tuple[Any, Any]:
    import microkernel
    from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
    from microkernel.crashcheck import Journal

    cfg = SystemConfig(memory="32M", devices=[DeviceConfig(
        image=str(image), driver="microkernel.sim:SimDisk", name="disk0")],
        cache=CacheConfig(writeback_interval=rng.choice([0.001, 0.05, 1.0, None])))
    journal: Journal | None = None
    try:
        async with microkernel.boot(config=cfg) as system:
            disk = system.server("disk0")
            assert isinstance(disk, SimDisk)
            disk.faults = faults
            instrument(system.router, trace, faults)
            journal = Journal(disk.write_log)
            with anyio.fail_after(3600):  # virtual seconds: a hang ends the run, not the machine
                async with anyio.create_task_group() as tg:
                    for n in range(processes):
                        worker = _Worker(await system.spawn(f"w{n}"), n, journal,
                                         random.Random(rng.random()), failures)
                        tg.start_soon(worker.run, ops // processes + (n < ops % processes))
    except TimeoutError:
        failures.append("the run hung (no progress within an hour of virtual time)")
    except Exception as exc:
        failures.append(f"the run raised {exc!r}")
    return (journal.log if journal is not None else None), journal


class _Worker:
    """One process doing random file operations in its own directory, checked against a model."""

    def __init__(self, proc: Any, n: int, journal: Any, rng: random.Random,
                 failures: list[str]) -> None:
        self.proc, self.journal, self.rng, self.failures = proc, journal, rng, failures
        self.root = f"/w{n}"
        self.files: dict[str, bytes] = {}
        self.unknown: set[str] = set()  # files an injected fault left in an unknown state
        self._current: tuple[str, ...] = ()  # the files the operation in progress changes

    async def run(self, ops: int) -> None:
        try:
            await self.proc.mkdir(self.root)
        except OSError as exc:
            if exc.errno != errno.EIO:
                self.failures.append(f"{self.root}: mkdir: {exc!r}")
            return  # an injected EIO: this worker has nowhere to work
        for step in range(ops):
            try:
                await self._step(step)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    self.failures.append(f"{self.root} step {step}: {exc!r}")
                    return
                for path in self._current:  # an injected EIO: the model no longer knows these
                    self.files.pop(path, None)
                    self.unknown.add(path)
        await self._verify_all()

    async def _step(self, step: int) -> None:
        r = self.rng.random()
        names = sorted(self.files)
        if r < 0.35 or not names:
            await self._write(f"{self.root}/f{step}", "wb", step)
        elif r < 0.55:
            await self._write(self.rng.choice(names), "ab", step)
        elif r < 0.65:
            path = self.rng.choice(names)
            size = self.rng.randrange(len(self.files[path]) + 1)
            self._touch(path)
            async with await self.proc.open(path, "r+b") as f:
                await f.truncate(size)
            self.files[path] = self.files[path][:size]
        elif r < 0.8:
            src, dst = self.rng.choice(names), f"{self.root}/r{step}"
            self._touch(src, dst)
            await self.proc.rename(src, dst)
            self.files[dst] = self.files.pop(src)
        elif r < 0.9:
            path = self.rng.choice(names)
            self._touch(path)
            await self.proc.unlink(path)
            del self.files[path]
        else:
            await self._check(self.rng.choice(names))

    def _touch(self, *paths: str) -> None:
        self._current = paths
        self.journal.touch(*paths)

    async def _write(self, path: str, mode: str, step: int) -> None:
        data = bytes([step & 0xFF]) * self.rng.choice([10, 700, 4096, 9000, 30000])
        sync = self.rng.random() < 0.4
        self._touch(path)
        before = b"" if mode == "wb" else self.files.get(path, b"")
        self.files[path] = before + data
        async with await self.proc.open(path, mode) as f:
            await f.write(data)
            if sync:
                await f.fsync()
        if sync:
            self.journal.fsynced(path, self.files[path])
        await self._check(path)

    async def _check(self, path: str) -> None:
        got = await self.proc.read_file(path)
        if got != self.files[path]:
            self.failures.append(f"{path}: read {len(got)} bytes, the model has "
                                 f"{len(self.files[path])}")

    async def _verify_all(self) -> None:
        listed = sorted(f"{self.root}/{n}" for n in await self.proc.listdir(self.root)
                        if f"{self.root}/{n}" not in self.unknown)
        if listed != sorted(self.files):
            self.failures.append(f"{self.root}: lists {listed}, the model has {sorted(self.files)}")
        for path in sorted(self.files):
            await self._check(path)


# ------------------------------------------------------------------ command line
def sweep(first: int, seeds: int, ops: int, faults: frozenset[str], processes: int,
          out: Callable[[str], None] = print) -> int:
    """Run seeds ``first .. first + seeds - 1``; print one line each; return how many failed."""
    failed = 0
    for seed in range(first, first + seeds):
        outcome: Outcome = run(seed, functools.partial(torture, seed, ops, faults=faults,
                                                       processes=processes))
        verdict = "ok" if outcome.ok else "FAILED"
        out(f"seed {seed}: {verdict}; {len(outcome.trace)} messages, faults {outcome.faults}, "
            f"{outcome.cut_states} power cuts checked, {outcome.fsynced_checked} fsynced files")
        if not outcome.ok:
            failed += 1
            for failure in outcome.failures:
                out(f"  {failure}")
            out(f"  replay: {replay_command(seed, ops, faults, processes)}")
    return failed


async def cli_torture(args: Any) -> int:
    """``microkernel torture``: each seed on its own simulated loop, in a worker thread."""
    faults = frozenset(f for f in args.faults.split(",") if f)
    unknown = faults - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {FAULT_KINDS}")
    failed = await anyio.to_thread.run_sync(sweep, args.seed, args.seeds, args.ops, faults,
                                            args.processes)
    return 1 if failed else 0
