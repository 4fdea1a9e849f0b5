"""The server runtime's fast paths keep the rules of the slow ones they replace.

Queued envelopes are taken without an event-loop turn, call deadlines are timers
rather than cancel scopes, and a concurrent server supervises plain asyncio
tasks itself: these tests pin down that deadlines, crashes, stops and
cancellation behave as they did with task groups and scopes.
"""

from __future__ import annotations

import asyncio

import anyio
import msgspec
import pytest

from microkernel.errors import CallTimeout, ServerCrashed
from microkernel.ipc import Envelope, Router
from microkernel.protocol import Ok
from microkernel.server import YIELD_EVERY, Server, handles

pytestmark = pytest.mark.anyio


class Hang(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    pass


class Nap(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    seconds: float


class Crash(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    pass


class Note(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    n: int


class Worker(Server):
    protocol = Hang | Nap | Crash | Note
    concurrent = True

    def __init__(self, name: str, router: Router) -> None:
        super().__init__(name, router)
        self.hanging = 0
        self.cancelled = 0
        self.napped = 0
        self.notes: list[int] = []

    @handles(Hang)
    async def on_hang(self, env: Envelope, msg: Hang) -> None:
        self.hanging += 1
        try:
            await anyio.sleep_forever()
        except BaseException:
            self.cancelled += 1
            raise

    @handles(Nap)
    async def on_nap(self, env: Envelope, msg: Nap) -> None:
        await anyio.sleep(msg.seconds)
        self.napped += 1

    @handles(Crash)
    async def on_crash(self, env: Envelope, msg: Crash) -> None:
        raise RuntimeError("a bug")

    @handles(Note)
    async def on_note(self, env: Envelope, msg: Note) -> None:
        self.notes.append(msg.n)


class Sequential(Worker):
    concurrent = False


async def test_a_call_into_a_full_inbox_times_out_within_its_deadline() -> None:
    router = Router()
    router.register("stuck", capacity=1)  # nobody ever reads this inbox
    client = router.register("client", capacity=0)
    client.send_nowait("stuck", Note(0))
    with anyio.fail_after(5):  # the call's own deadline must fire long before this one
        with pytest.raises(CallTimeout):
            await client.call("stuck", Note(1), Ok, timeout=0.05)
    assert router.in_flight() == 0


async def test_a_deadline_is_a_timeout_error_and_leaves_nothing_in_flight() -> None:
    router = Router()
    worker = Worker("w", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.serve)
        with pytest.raises(CallTimeout) as info:
            await client.call("w", Hang(), Ok, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert router.in_flight() == 0
        await client.call("w", Nap(0), Ok)  # the server still answers
        tg.cancel_scope.cancel()


async def test_a_handlers_crash_cancels_its_siblings_and_the_server_restarts() -> None:
    router = Router()
    worker = Worker("w", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.serve)
        failures: list[BaseException] = []

        async def hanging_call() -> None:
            try:
                await client.call("w", Hang(), Ok)
            except OSError as exc:
                failures.append(exc)

        tg.start_soon(hanging_call)
        while not worker.hanging:
            await anyio.sleep(0)
        with pytest.raises(ServerCrashed):
            await client.call("w", Crash(), Ok)
        while not failures:
            await anyio.sleep(0)
        assert isinstance(failures[0], ServerCrashed)
        assert worker.cancelled == 1
        assert worker.statistics().crashes == 1
        await client.call("w", Nap(0), Ok)
        await worker.stop()


async def test_stopping_a_concurrent_server_waits_for_its_handlers() -> None:
    router = Router()
    worker = Worker("w", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.serve)
        for _ in range(3):
            await client.send("w", Nap(0.02))
        await anyio.sleep(0)
        await worker.stop()
        assert worker.napped == 3


async def test_cancelling_a_concurrent_server_cancels_its_handlers() -> None:
    router = Router()
    worker = Worker("w", router)
    client = router.register("client", capacity=0)
    before = len(asyncio.all_tasks())
    async with anyio.create_task_group() as tg:
        await tg.start(worker.serve)
        for _ in range(3):
            await client.send("w", Hang())
        while worker.hanging < 3:
            await anyio.sleep(0)
        tg.cancel_scope.cancel()
    assert worker.cancelled == 3
    assert len(asyncio.all_tasks()) == before  # no handler outlives its server


@pytest.mark.parametrize("server", [Worker, Sequential])
async def test_a_busy_inbox_is_served_in_order_and_still_lets_others_run(
    server: type[Worker],
) -> None:
    router = Router()
    worker = server("w", router)
    client = router.register("client", capacity=0)
    count = 3 * YIELD_EVERY
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        await tg.start(worker.serve)
        for n in range(count):
            client.send_nowait("w", Note(n))
        tg.start_soon(ticker)
        while len(worker.notes) < count:
            await anyio.sleep(0)
        assert worker.notes == list(range(count))
        assert ticks >= 2  # the intake gave the loop turns while the inbox was full
        tg.cancel_scope.cancel()
