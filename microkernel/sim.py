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
  threads, with seeded faults per command: EIO on writes, latency, a hang that
  recovers, and a power cut during the run (the disk stops at a seeded write).
* **Message faults.** Per message, drawn from the seed: a delay before
  delivery, a dropped reply (the caller times out, in virtual time), an EIO
  error reply in place of the real one, and a crash of the receiving server
  (a driver or the cache) that the runtime's supervision restarts.
* **Power cuts.** Any point of the recorded write log (and reorderings and torn
  writes inside a flush epoch) is a crash image, checked with
  :mod:`microkernel.crashcheck`; so is the image where a cut during the run
  stopped the disk.

:func:`torture` runs random workloads from several processes, each in its own
directory, checks every result against a model, then cuts power at random
points of the log and checks those images. The same seed gives the same run,
message for message: :attr:`Outcome.trace` lists every delivered message
(source, destination, type, id, correlation, kind, reply-to), without wall
times; each injected fault is in the trace too (source ``sim``, type
``fault:KIND:TYPE``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import heapq
import itertools
import random
import tempfile
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from drivers.base import DmaPlan
from drivers.errors import MediumError
from drivers.protocol import Flush, IoDone
from drivers.recording import RecordingRamDisk, crash_states
from microkernel.errors import error_to_wire
from microkernel.ipc import CALL, ERROR, REPLY, Envelope, Router, encode
from microkernel.protocol import ErrorReply
from microkernel.server import Server, handles

# Message faults: delay (late delivery), drop (a reply is lost), error (an EIO reply
# replaces the real one), crash (the receiving server crashes and is restarted).
# Device faults: latency, eio (a write fails), hang (a command stalls, then completes),
# powercut (the disk stops accepting writes at a seeded write; the run ends there).
FAULT_KINDS = ("delay", "drop", "error", "crash", "latency", "eio", "hang", "powercut")
TraceEntry = tuple[str, str, str, int, int, int, int]
# The errnos a workload may meet because of an injected fault (not a bug of the system):
# EIO for failed writes, error replies and crashes, ETIMEDOUT for dropped replies and hangs.
FAULT_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT})
# Servers a crash fault may hit: those whose restart hook makes a crash survivable.
CRASHABLE = ("disk0", "cache")
# At most this many of a kind per run: supervision gives up after Server.max_restarts.
FAULT_LIMITS = {"crash": 3, "hang": 4, "powercut": 1}
# A hang lasts up to this long (virtual seconds): under the cache's 30 s I/O timeout,
# so the command completes late instead of landing in a frame already given back.
HANG_S = (1.0, 25.0)


class SimulatedCrash(Exception):
    """Raised inside a server by the ``crash`` fault: the runtime treats it as any crash."""


class PowerCut(MediumError):
    """The simulated disk lost power: it accepts no more commands."""


class SimLoop(asyncio.SelectorEventLoop):
    """An asyncio loop with a seeded order of ready callbacks and a virtual clock."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self._virtual = 0.0
        self._task_seq: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary())
        self._tasks_made = itertools.count()
        self.set_task_factory(self._make_task)

    def _make_task(self, loop: asyncio.AbstractEventLoop, coro: Any,
                   **kwargs: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        self._task_seq[task] = next(self._tasks_made)
        return task

    def _canonical(self, handles: list[asyncio.Handle]) -> list[asyncio.Handle]:
        """The ready queue in an order that does not depend on memory addresses.

        Code that wakes tasks while iterating a set (anyio cancels a task
        group's tasks that way) queues them in an order of ``id()``s, which
        differs from run to run; tasks sorted by creation order do not.
        """
        seqs = self._task_seq

        def key(item: tuple[int, asyncio.Handle]) -> tuple[int, int]:
            task = getattr(item[1]._callback, "__self__", None)  # type: ignore[attr-defined]
            seq = seqs.get(task) if isinstance(task, asyncio.Task) else None
            return (0, seq) if seq is not None else (1, item[0])

        return [h for _, h in sorted(enumerate(handles), key=key)]

    def time(self) -> float:
        return self._virtual

    def _run_once(self) -> None:
        self._virtual += 1e-6  # each turn costs a microsecond: busy loops still let time pass
        ready: Any = self._ready  # type: ignore[attr-defined]
        if not ready:
            self._jump_to_next_timer()
        elif len(ready) > 1:
            order = self._canonical(list(ready))
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
            faults.check_power()  # a cut during a hang or latency stops this command too
        if write:
            self._stage(plan, to_device=True)
        self._dma(plan.views, offset, write, fua)
        if not write:
            self._stage(plan, to_device=False)

    @handles(Flush)
    async def _on_flush(self, env: Envelope, msg: Flush) -> IoDone:
        async with self._command():
            if self.faults is not None:
                self.faults.check_power()
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
    cut_at: int | None = None  # the write command the power cut stops (counted from 1)
    writes: int = 0
    powered: bool = True
    on_power_cut: Callable[[], None] | None = None  # ends the run
    trace: list[TraceEntry] | None = None

    def __post_init__(self) -> None:
        if "powercut" in self.kinds:
            self.cut_at = self.rng.randrange(1, 120)

    def _hit(self, kind: str) -> bool:
        if kind not in self.kinds or self.rng.random() >= self.rate:
            return False
        if self.injected.get(kind, 0) >= FAULT_LIMITS.get(kind, 1 << 62):
            return False
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return True

    def _note(self, kind: str, target: str, env: Envelope | None = None) -> None:
        if self.trace is not None:
            self.trace.append(("sim", target, f"fault:{kind}:{env.type if env else ''}",
                               env.id if env else 0, env.corr if env else 0, -1,
                               env.reply_to if env else 0))

    # ------------------------------------------------------------- devices
    def check_power(self) -> None:
        if not self.powered:
            raise PowerCut("simulated power cut: the disk accepts no more commands")

    async def device_command(self, write: bool, offset: int) -> None:
        self.check_power()
        if self._hit("latency"):
            await anyio.sleep(self.rng.uniform(0.001, 0.05))
        if self._hit("hang"):
            self._note("hang", "disk0")
            await anyio.sleep(self.rng.uniform(*HANG_S))
        if write and self.cut_at is not None:
            self.writes += 1
            if self.writes >= self.cut_at and self.powered:
                self.cut_power()
        self.check_power()
        if write and self._hit("eio"):
            raise MediumError(f"simulated medium error writing byte {offset}")

    def cut_power(self) -> None:
        self.powered = False
        self.injected["powercut"] = 1
        self._note("powercut", "disk0")
        if self.on_power_cut is not None:
            self.on_power_cut()

    # ------------------------------------------------------------ messages
    async def message(self, env: Envelope) -> None:
        if self._hit("delay"):
            await anyio.sleep(self.rng.uniform(0.0005, 0.02))

    def reply(self, env: Envelope) -> Envelope | None:
        """The reply as delivered: itself, an EIO error in its place, or None (dropped)."""
        if self._hit("drop"):
            self._note("drop", env.dst, env)
            return None
        if env.kind != ERROR and self._hit("error"):
            self._note("error", env.dst, env)
            wire = error_to_wire(OSError(errno.EIO, f"simulated EIO reply from {env.src}"))
            return Envelope(env.src, env.dst, env.id, env.corr, env.reply_to, ERROR,
                            "ErrorReply", encode(ErrorReply(*wire)))
        return env

    def crash(self, server: str, env: Envelope) -> None:
        """Crash on calls only: the caller learns of it (``ServerCrashed``); a one-way message
        lost in a crash would be lost silently, which no supervision can report."""
        if env.kind == CALL and self._hit("crash"):
            self._note("crash", server, env)
            raise SimulatedCrash(f"simulated crash of {server} on {env.type}")


def instrument(router: Router, trace: list[TraceEntry], faults: SimFaults | None,
               servers: list[Server] = ()) -> None:  # type: ignore[assignment]
    """Record every delivered message; delay, drop, falsify and crash as the faults say."""
    account = router._account
    deliver = router.deliver
    complete = router.complete

    def traced(env: Envelope) -> None:
        trace.append((env.src, env.dst, env.type, env.id, env.corr, env.kind, env.reply_to))
        account(env)

    async def delayed(env: Envelope) -> None:
        if faults is not None:
            await faults.message(env)
        await deliver(env)

    def faulty_complete(env: Envelope) -> None:
        if faults is not None and env.kind in (REPLY, ERROR):
            delivered = faults.reply(env)
            if delivered is None:
                return  # lost: the caller's timeout (virtual time) ends its wait
            env = delivered
        complete(env)

    router._account = traced  # type: ignore[method-assign]
    router.deliver = delayed  # type: ignore[method-assign]
    router.complete = faulty_complete  # type: ignore[method-assign]
    if faults is not None and "crash" in faults.kinds:
        for server in servers:
            _crash_on_dispatch(server, faults)


def _crash_on_dispatch(server: Server, faults: SimFaults) -> None:
    """Let the ``crash`` fault fire as ``server`` takes a message, inside its supervision."""
    dispatch = server._dispatch

    async def dispatch_or_crash(env: Envelope) -> None:
        faults.crash(server.name, env)
        await dispatch(env)

    server._dispatch = dispatch_or_crash  # type: ignore[method-assign]


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
    trace: list[TraceEntry] = []
    sim_faults = SimFaults(random.Random(rng.random()), faults, trace=trace) if faults else None
    failures: list[str] = []
    log, journal = await _workload_run(image, seed, ops, processes, rng, sim_faults, trace,
                                       failures)
    outcome = Outcome(seed, ops, trace, failures, dict(sim_faults.injected) if sim_faults else {})
    if log is None:
        return outcome
    states = list(crash_states(log, random.Random(seed), samples=1))
    chosen = random.Random(seed + 1).sample(states, min(cuts, len(states)))
    if sim_faults is not None and not sim_faults.powered:
        # The cut during the run: the disk as it stopped, and what the last epoch allows.
        end = len(log.entries)
        chosen += [s for s in states if s.window_end >= end and s not in chosen]
    chosen.sort(key=lambda s: (s.durable, s.kind != "prefix"))
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
            instrument(system.router, trace, faults,
                       [system.server(name) for name in CRASHABLE])
            journal = Journal(disk.write_log)
            with anyio.fail_after(3600):  # virtual seconds: a hang ends the run, not the machine
                async with anyio.create_task_group() as tg:
                    if faults is not None:
                        faults.on_power_cut = tg.cancel_scope.cancel
                    for n in range(processes):
                        worker_rng = random.Random(rng.random())
                        try:
                            proc = await system.spawn(f"w{n}")
                        except OSError as exc:  # an injected fault met the process's start
                            if exc.errno not in FAULT_ERRNOS:
                                failures.append(f"spawn w{n}: {exc!r}")
                            continue
                        worker = _Worker(proc, n, journal, worker_rng, failures)
                        tg.start_soon(worker.run, ops // processes + (n < ops % processes))
    except TimeoutError:
        failures.append("the run hung (no progress within an hour of virtual time)")
    except Exception as exc:
        if not (faults is not None and faults.injected and _fault_consequence(exc, faults)):
            failures.append(f"the run raised {exc!r}")
    return (journal.log if journal is not None else None), journal


def _fault_consequence(exc: BaseException, faults: SimFaults) -> bool:
    """Whether ``exc`` (say, from shutting down) is what the injected faults explain: after a
    power cut any I/O error; otherwise only the errnos the faults produce."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_fault_consequence(e, faults) for e in exc.exceptions)
    if not isinstance(exc, OSError):
        return False
    return not faults.powered or exc.errno in FAULT_ERRNOS


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
            if exc.errno not in FAULT_ERRNOS:
                self.failures.append(f"{self.root}: mkdir: {exc!r}")
            return  # an injected fault: this worker has nowhere to work
        for step in range(ops):
            try:
                await self._step(step)
            except OSError as exc:
                if exc.errno not in FAULT_ERRNOS:
                    self.failures.append(f"{self.root} step {step}: {exc!r}")
                    return
                for path in self._current:  # an injected fault: the model no longer knows these
                    self.files.pop(path, None)
                    self.unknown.add(path)
        try:
            await self._verify_all()
        except OSError as exc:
            if exc.errno not in FAULT_ERRNOS:
                self.failures.append(f"{self.root}: verifying: {exc!r}")

    async def _step(self, step: int) -> None:
        self._current = ()
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


def parse_faults(text: str) -> frozenset[str]:
    """``--faults``: comma-separated kinds, ``all`` for every kind of :data:`FAULT_KINDS`."""
    kinds = {f.strip() for f in text.split(",") if f.strip()}
    if "all" in kinds:
        kinds = (kinds - {"all"}) | set(FAULT_KINDS)
    return frozenset(kinds)


async def cli_torture(args: Any) -> int:
    """``microkernel torture``: each seed on its own simulated loop, in a worker thread."""
    faults = parse_faults(args.faults)
    unknown = faults - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {FAULT_KINDS}")
    failed = await anyio.to_thread.run_sync(sweep, args.seed, args.seeds, args.ops, faults,
                                            args.processes)
    return 1 if failed else 0
