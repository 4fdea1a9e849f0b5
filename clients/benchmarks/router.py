"""Router round trips: a routed, msgspec-encoded call against a bare anyio stream round trip.

The bare side is the floor any IPC built on anyio memory streams pays: one
object down a stream to a server task and one back. The routed side is what
every message of the system pays: envelope, capability check, counters,
msgpack encode and typed decode on both ends, dispatch by type, and the reply
resolving the caller's future.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec

from clients.benchmarks.harness import Sample
from microkernel.ipc import Envelope, Router
from microkernel.server import Server, handles

ROUND_TRIPS = 2000


class Ping(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    n: int


class Pong(msgspec.Struct, frozen=True, gc=False, array_like=True, tag=True):
    n: int


class EchoServer(Server):
    protocol = Ping

    @handles(Ping)
    async def on_ping(self, env: Envelope, msg: Ping) -> Pong:
        return Pong(msg.n)


async def routed_round_trips(count: int = ROUND_TRIPS) -> Sample:
    router = Router(capabilities={"client": ["echo"]})
    server = EchoServer("echo", router)
    client = router.register("client", capacity=0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        start = time.perf_counter()
        for i in range(count):
            await client.call("echo", Ping(i), Pong)
        elapsed = time.perf_counter() - start
        await server.stop()
    return Sample(elapsed / count)


@asynccontextmanager
async def _bare_server() -> AsyncIterator[
    tuple[anyio.abc.ObjectSendStream[int], anyio.abc.ObjectReceiveStream[int]]
]:
    to_server, server_in = anyio.create_memory_object_stream[int](256)
    server_out, from_server = anyio.create_memory_object_stream[int](256)

    async def serve() -> None:
        async with server_in, server_out:
            async for item in server_in:
                await server_out.send(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        async with to_server, from_server:
            yield to_server, from_server


async def bare_round_trips(count: int = ROUND_TRIPS) -> Sample:
    async with _bare_server() as (send, receive):
        start = time.perf_counter()
        for i in range(count):
            await send.send(i)
            await receive.receive()
        elapsed = time.perf_counter() - start
    return Sample(elapsed / count)
