"""Router, IPC primitives and the server runtime."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microkernel.errors import (
    CallTimeout,
    CapabilityDenied,
    MalformedMessage,
    PortNotFound,
    ServerCrashed,
)
from microkernel.ipc import Envelope, Router
from microkernel.protocol import Ok
from microkernel.server import DEFERRED, Server, handles
from microkernel.trace import Tracer, current_corr

pytestmark = pytest.mark.anyio


class Ping(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    n: int


class Pong(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    n: int
    corr: int


class Fail(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    err: int


class Boom(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    pass


class Later(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    pass


class Forward(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    to: str


class Echo(Server):
    protocol = Ping | Fail | Boom | Later | Forward
    concurrent = True

    def __init__(self, name: str, router: Router) -> None:
        super().__init__(name, router)
        self.restarts = 0
        self.parked: list[Envelope] = []

    @handles(Ping)
    async def on_ping(self, env: Envelope, msg: Ping) -> Pong:
        return Pong(msg.n + 1, current_corr.get())

    @handles(Fail)
    async def on_fail(self, env: Envelope, msg: Fail) -> None:
        raise OSError(msg.err, "asked to fail")

    @handles(Boom)
    async def on_boom(self, env: Envelope, msg: Boom) -> None:
        raise ZeroDivisionError("a bug")

    @handles(Later)
    async def on_later(self, env: Envelope, msg: Later) -> object:
        self.parked.append(env)
        return DEFERRED

    @handles(Forward)
    async def on_forward(self, env: Envelope, msg: Forward) -> Pong:
        return await self.endpoint.call(msg.to, Ping(10), Pong)

    async def restart(self) -> None:
        self.restarts += 1


async def test_call_reply_and_counters() -> None:
    router = Router()
    echo = Echo("echo", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(echo.serve)
        assert await client.call("echo", Ping(1), Pong) == Pong(2, 0)
        assert router.counters.messages_by_type["Ping"] == 1
        assert router.counters.messages_by_type["Pong"] == 1
        await echo.stop()
    assert router.counters.messages_total == 2


async def test_errors_cross_ipc_as_typed_exceptions() -> None:
    router = Router()
    echo = Echo("echo", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(echo.serve)
        with pytest.raises(FileNotFoundError, match="asked to fail"):
            await client.call("echo", Fail(errno.ENOENT), Ok)
        with pytest.raises(PortNotFound):
            await client.call("nobody", Ping(1), Pong)
        await echo.stop()


async def test_malformed_and_unexpected_messages_are_rejected_not_crashing() -> None:
    router = Router()
    echo = Echo("echo", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(echo.serve)
        # A body that is not msgpack of any accepted type.
        env = Envelope("client", "echo", router.next_id(), 0, 0, 1, "Junk", b"\xc1\xff")
        fut = router.expect_reply(env.id, "echo")
        await router.deliver(env)
        reply = await fut
        assert reply.kind == 3
        # A well-formed message of a type the server does not handle.
        with pytest.raises(MalformedMessage) as info:
            await client.call("echo", Pong(1, 1), Pong)
        assert info.value.errno == errno.EBADMSG
        assert await client.call("echo", Ping(5), Pong) == Pong(6, 0)
        assert echo.statistics().malformed == 2
        await echo.stop()


async def test_capabilities_and_src_stamping() -> None:
    router = Router(capabilities={"proc:*": ["vfs"], "vfs": ["*"]})
    vfs = Echo("vfs", router)
    other = Echo("fat0", router)
    proc = router.register("proc:1", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(vfs.serve)
        await tg.start(other.serve)
        assert (await proc.call("vfs", Ping(1), Pong)).n == 2
        with pytest.raises(CapabilityDenied):
            await proc.call("fat0", Ping(1), Pong)
        # The stub cannot choose its src: the endpoint stamps its own name.
        assert proc._envelope("vfs", Ping(1), 0, None).src == "proc:1"
        await vfs.stop()
        await other.stop()


async def test_call_timeout_and_deferred_reply() -> None:
    router = Router()
    echo = Echo("echo", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(echo.serve)
        with pytest.raises(CallTimeout) as info:
            await client.call("echo", Later(), Ok, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert router.in_flight() == 0

        async def answer_later() -> None:
            while not echo.parked:
                await anyio.sleep(0)
            echo.reply(echo.parked.pop(), Pong(7, 0))

        tg.start_soon(answer_later)
        echo.parked.clear()
        assert await client.call("echo", Later(), Pong) == Pong(7, 0)
        await echo.stop()


async def test_crash_is_logged_restarted_and_in_flight_callers_fail() -> None:
    router = Router()
    echo = Echo("echo", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(echo.serve)
        results: list[BaseException] = []

        async def parked_call() -> None:
            try:
                await client.call("echo", Later(), Ok)
            except OSError as exc:
                results.append(exc)

        tg.start_soon(parked_call)
        while not echo.parked:
            await anyio.sleep(0)
        with pytest.raises(ServerCrashed):
            await client.call("echo", Boom(), Ok)
        while not results:
            await anyio.sleep(0)
        assert isinstance(results[0], ServerCrashed)
        assert echo.restarts == 1
        assert await client.call("echo", Ping(1), Pong) == Pong(2, 0)
        assert echo.statistics().crashes == 1
        await echo.stop()


async def test_correlation_id_follows_every_message(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    tracer = Tracer(trace.open("w"))
    router = Router(tracer=tracer)
    a, b = Echo("a", router), Echo("b", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve)
        await tg.start(b.serve)
        pong: Pong = await client.call("a", Forward("b"), Pong, corr=4242)
        assert pong.corr == 4242
        await a.stop()
        await b.stop()
    tracer.close()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    msgs = [e for e in events if e["event"] == "msg"]
    assert [(m["src"], m["dst"], m["msg"]) for m in msgs] == [
        ("client", "a", "Forward"),
        ("a", "b", "Ping"),
        ("b", "a", "Pong"),
        ("a", "client", "Pong"),
    ]
    assert {m["corr"] for m in msgs} == {4242}
    assert all({"id", "size", "t_ns", "kind"} <= m.keys() for m in msgs)
    spans = [e for e in events if e["event"] == "span"]
    assert {(s["server"], s["name"]) for s in spans} == {("a", "Forward"), ("b", "Ping")}
    assert all(s["end_ns"] >= s["start_ns"] for s in spans)


async def test_bounded_inbox_slows_the_sender() -> None:
    router = Router()
    router.register("slow", capacity=2)
    client = router.register("client", capacity=0)
    client.send_nowait("slow", Ping(1))
    client.send_nowait("slow", Ping(2))
    with pytest.raises(anyio.WouldBlock):
        client.send_nowait("slow", Ping(3))
    with anyio.move_on_after(0.05) as scope:
        await client.send("slow", Ping(3))
    assert scope.cancelled_caught


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.tuples(st.binary(max_size=64), st.sampled_from([0, 1])), max_size=20))
def test_arbitrary_bytes_never_crash_a_server(bodies: list[tuple[bytes, int]]) -> None:
    async def scenario() -> None:
        router = Router()
        echo = Echo("echo", router)
        client = router.register("client", capacity=0)
        async with anyio.create_task_group() as tg:
            await tg.start(echo.serve)
            for body, kind in bodies:
                env = Envelope("client", "echo", router.next_id(), 0, 0, kind, "Fuzz", body)
                future = router.expect_reply(env.id, "echo") if kind == 1 else None
                await router.deliver(env)
                if future is not None:
                    with anyio.fail_after(5):
                        reply = await future
                    assert reply.kind in (2, 3)  # a reply or an error reply, never silence
                    router.forget(env.id)
            assert await client.call("echo", Ping(1), Pong) == Pong(2, 0)
            assert echo.statistics().crashes == 0
            await echo.stop()

    anyio.run(scenario)


class Sequential(Server):
    """A one-at-a-time server (like the FAT server) whose handler waits for a gate."""

    protocol = Ping
    concurrent = False

    def __init__(self, name: str, router: Router) -> None:
        super().__init__(name, router)
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.events: list[str] = []

    @handles(Ping)
    async def on_ping(self, env: Envelope, msg: Ping) -> Pong:
        self.entered.set()
        await self.gate.wait()
        self.events.append("handler done")
        return Pong(msg.n, 0)

    async def teardown(self) -> None:
        self.events.append("teardown")


async def test_a_sequential_servers_teardown_waits_for_the_handler_in_flight() -> None:
    # A file system's teardown (unmount: FSInfo, clean flag) beside an operation still
    # waiting for a reply would mark the volume clean over the operation's half-done changes.
    router = Router()
    server = Sequential("seq", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        replies: list[Pong] = []

        async def call() -> None:
            replies.append(await client.call("seq", Ping(3), Pong))

        tg.start_soon(call)
        await server.entered.wait()
        tg.start_soon(server.stop)
        for _ in range(20):
            await anyio.sleep(0)
        assert server.events == []  # stop is waiting for the handler, not tearing down
        server.gate.set()
    assert server.events == ["handler done", "teardown"]
    assert replies == [Pong(3, 0)]
