"""Authority per message type: the router enforces the capability table, by (sender, receiver, type)."""

from __future__ import annotations

import errno
from pathlib import Path

import anyio
import msgspec
import pytest

import microkernel
from microkernel import ipc
from microkernel.config import load_config
from microkernel.errors import CapabilityDenied, ForgedReply, MalformedMessage, MessageDenied
from microkernel.ipc import CALL, Envelope, Router, message_type
from microkernel.protocol import Ok
from microkernel.server import DEFERRED, Server, handles
from servers.cache.protocol import GiveBack, PageRun, SectorsReady
from servers.fs.protocol import FsStatFs, FsVolume
from servers.vfs.protocol import Stat
from tests.e2e.conftest import ImageFactory

pytestmark = pytest.mark.anyio


class Ping(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    n: int


class Secret(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    n: int


class Slow(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    pass


class Target(Server):
    protocol = Ping | Secret | Slow
    concurrent = True

    def __init__(self, name: str, router: Router) -> None:
        super().__init__(name, router)
        self.secrets = 0
        self.parked: list[Envelope] = []

    @handles(Ping)
    async def on_ping(self, env: Envelope, msg: Ping) -> Ping:
        return Ping(msg.n + 1)

    @handles(Secret)
    async def on_secret(self, env: Envelope, msg: Secret) -> None:
        self.secrets += 1

    @handles(Slow)
    async def on_slow(self, env: Envelope, msg: Slow) -> object:
        self.parked.append(env)
        return DEFERRED


TABLE = {"proc:*": {"target": ["Ping", "Slow"]}, "admin": ["*"]}


async def test_a_type_outside_the_table_is_refused_typed_and_counted() -> None:
    router = Router(capabilities=TABLE)
    target = Target("target", router)
    proc = router.register("proc:1", capacity=0)
    admin = router.register("admin", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(target.serve)
        assert await proc.call("target", Ping(1), Ping) == Ping(2)
        with pytest.raises(MessageDenied) as info:
            await proc.call("target", Secret(1), Ok)
        assert info.value.errno == errno.EPERM
        with pytest.raises(MessageDenied):
            await proc.send("target", Secret(2))  # a one-way send is refused the same way
        with pytest.raises(CapabilityDenied) as denied:
            await proc.call("admin", Ping(1), Ping)  # no rule reaches that port at all
        assert denied.value.errno == errno.EACCES
        await admin.call("target", Secret(3), Ok)  # a list entry allows every type
        assert target.secrets == 1  # only the admin's Secret arrived
        stats = router.counters.snapshot(frames_free=0)
        assert stats.refusals == 3
        assert stats.refusals_by_type == {"Secret": 2, "Ping": 1}
        assert await proc.call("target", Ping(5), Ping) == Ping(6)  # the server still answers
        await target.stop()


async def test_a_message_dressed_as_an_allowed_type_travels_as_what_it_is() -> None:
    """A class named after an allowed type but tagged as a forbidden one is refused by its tag."""

    class Ping(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="Secret"):
        n: int

    router = Router(capabilities=TABLE)
    target = Target("target", router)
    proc = router.register("proc:1", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(target.serve)
        assert message_type(Ping(1)) == "Secret"
        with pytest.raises(MessageDenied):
            await proc.call("target", Ping(1), Ok)
        assert target.secrets == 0
        await target.stop()


async def test_a_body_that_decodes_to_another_type_than_declared_is_rejected() -> None:
    """A tag hidden in another field: the router sees Ping, the body decodes to Secret."""

    class Disguised(msgspec.Struct, frozen=True, gc=False, tag="Ping", tag_field="kind"):
        type: str
        n: int

    router = Router(capabilities={"proc:*": {"target": ["Ping"]}})

    class MapPing(msgspec.Struct, frozen=True, gc=False, tag="Ping"):
        n: int

    class MapSecret(msgspec.Struct, frozen=True, gc=False, tag="Secret"):
        n: int

    class MapTarget(Server):
        protocol = MapPing | MapSecret

        @handles(MapPing, MapSecret)
        async def on_any(self, env: Envelope, msg: MapPing | MapSecret) -> None:
            raise AssertionError(f"{msg} reached the handler")

    target = MapTarget("target", router)
    proc = router.register("proc:1", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(target.serve)
        with pytest.raises(MalformedMessage):
            await proc.call("target", Disguised("Secret", 1), Ok)
        assert router.counters.refusals == 1
        await target.stop()


async def test_only_the_callee_may_answer_a_call_and_only_to_its_caller() -> None:
    router = Router(capabilities=TABLE)
    target = Target("target", router)
    victim = router.register("proc:1", capacity=0)
    forger = router.register("proc:2", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(target.serve)
        result: list[Ping] = []

        async def wait() -> None:
            result.append(await victim.call("target", Slow(), Ping))

        tg.start_soon(wait)
        while not target.parked:
            await anyio.sleep(0)
        (request,) = target.parked
        # The forger guesses the call id and answers it as if it were the target.
        fake = Envelope("proc:1", "target", 0, 0, 0, CALL, "Slow", b"")
        fake = msgspec.structs.replace(fake, id=request.id)
        with pytest.raises(ForgedReply):
            forger.reply(fake, Ping(666))
        with pytest.raises(ForgedReply):
            forger.reply(request, Ping(666))  # even holding the real request envelope
        target.reply(request, Ping(7))
        with anyio.fail_after(5):
            while not result:
                await anyio.sleep(0)
        assert result == [Ping(7)]
        assert router.counters.refusals == 2
        await target.stop()


async def test_the_table_is_data_in_the_boot_toml(tmp_path: Path) -> None:
    toml = tmp_path / "system.toml"
    toml.write_text(
        'memory = "8M"\n'
        '[capabilities]\nkernel = ["*"]\n'
        '[capabilities."proc:*"]\ntarget = ["Ping"]\n'
    )
    cfg = load_config(toml)
    assert cfg.capabilities == {"kernel": ["*"], "proc:*": {"target": ["Ping"]}}
    router = Router(capabilities=cfg.capabilities)
    assert router.capabilities.allows("proc:9", "target", "Ping")
    assert not router.capabilities.allows("proc:9", "target", "Secret")
    assert router.capabilities.allows("kernel", "anything", "Secret")


async def test_default_table_keeps_processes_to_system_calls(make_image: ImageFactory) -> None:
    """Processes reach the VFS with system calls only; notifications are the cache's alone."""
    image = make_image({"/a.txt": b"hello"})
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("p")
        endpoint = proc.kernel.endpoint
        before = system.statistics().refusals
        with pytest.raises(MessageDenied):
            await endpoint.send("vfs", SectorsReady(1, "nvme0", [PageRun(0, 1, 1 << 20)]))
        with pytest.raises(MessageDenied):
            await endpoint.send("vfs", GiveBack(1, 100))
        with pytest.raises(MessageDenied):
            await endpoint.call("vfs", FsStatFs(), FsVolume)
        with pytest.raises(CapabilityDenied):
            await endpoint.call("cache", GiveBack(1, 1), Ok)
        stats = system.statistics()
        assert stats.refusals - before == 4
        assert stats.refusals_by_type["GiveBack"] == 2
        assert (await proc.stat("/a.txt")).size == 5
        assert system.router.capabilities.allows(proc.kernel.port, "vfs", message_type(Stat("/")))


async def test_remembered_answers_do_not_grow_with_process_churn() -> None:
    router = Router(capabilities=TABLE)
    target = Target("target", router)
    async with anyio.create_task_group() as tg:
        await tg.start(target.serve)
        for pid in range(200):
            port = f"proc:{pid}"
            proc = router.register(port, capacity=0)
            assert await proc.call("target", Ping(pid), Ping) == Ping(pid + 1)
            with pytest.raises(MessageDenied):
                await proc.call("target", Secret(pid), Ok)
            with pytest.raises(CapabilityDenied):
                await proc.send("proc:0", Ping(1))  # a process as a receiver is remembered too
            router.unregister(port)
        assert router.capabilities.remembered() == 0
        await target.stop()
    assert router.capabilities.remembered() == 0


async def test_made_up_type_names_cost_the_router_no_memory() -> None:
    """A sender inventing a new tag per message: refused, counted, nothing grows without bound."""
    router = Router(capabilities=TABLE)
    target = Target("target", router)
    proc = router.register("proc:1", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(target.serve)
        for n in range(5000):
            tag = f"Made-up-{n}" + "x" * (n % 3 * 40)
            made_up = msgspec.defstruct(f"T{n}", [("n", int)], tag=tag)
            with pytest.raises(MessageDenied):
                await proc.send("target", made_up(n))
        stats = router.counters.snapshot(frames_free=0)
        assert stats.refusals == 5000
        assert len(stats.refusals_by_type) <= 257
        assert stats.refusals_by_type["(other)"] >= 5000 - 256
        assert router.capabilities.remembered() <= 512
        assert await proc.call("target", Ping(1), Ping) == Ping(2)
        await target.stop()
        assert len(ipc._type_names) <= 4096
