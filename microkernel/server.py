"""The server runtime: registration, a typed inbox loop, supervision.

A server is a thin async shell around a pure core. Subclasses set
``protocol`` (the tagged union of message types their inbox accepts) and mark
handler methods with :func:`handles`. The runtime

* decodes each body with one long-lived typed decoder (a malformed or
  unexpected message gets a ``MalformedMessage`` error reply, never a
  half-processed request), and checks that the decoded type is the type the
  envelope declared, the one the router's capability table allowed;
* dispatches by message type, one at a time or concurrently (``concurrent``);
* replies with what the handler returns (``None`` means ``Ok``; ``DEFERRED``
  means the handler will call :meth:`Server.reply` later, e.g. after DMA);
* turns an ``OSError`` from a handler into an error reply for that caller only;
* treats any other exception as a crash: it is logged with its traceback, every
  call in flight to the server gets a ``ServerCrashed`` error, the server's
  :meth:`Server.restart` hook resets its state and the inbox loop starts again.
  A driver crash therefore does not take the system down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from microkernel.errors import MalformedMessage, ServerCrashed
from microkernel.ipc import CALL, Endpoint, Envelope, Router, message_type
from microkernel.protocol import Ok
from microkernel.trace import current_corr, log


class _Deferred:
    """Sentinel: the handler answers later with ``Server.reply``."""

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Final = _Deferred()
YIELD_EVERY: Final = 32  # envelopes taken from a busy inbox between two event-loop turns
_OK: Final = Ok()

Handler = Callable[[Any, Envelope, Any], Awaitable[Any]]


def handles(*types: type[msgspec.Struct]) -> Callable[[Handler], Handler]:
    """Mark a method as the handler of the given message types."""

    def mark(fn: Handler) -> Handler:
        fn.__dict__.setdefault("_handles", []).extend(types)
        return fn

    return mark


class _Inbox:
    """Takes a server's envelopes; one already waiting is taken without an event-loop turn.

    ``receive`` always yields to the loop first (a checkpoint), which cost a whole
    loop turn per message; taking what is already queued skips it. Every
    ``YIELD_EVERY`` envelopes the loop still gets its turn (and a cancellation its
    chance), so a busy inbox does not starve the other servers.
    """

    __slots__ = ("_stream", "_taken")

    def __init__(self, stream: MemoryObjectReceiveStream[Envelope]) -> None:
        self._stream = stream
        self._taken = 0

    async def take(self) -> Envelope | None:
        """The next envelope, or ``None`` once the inbox is closed and empty."""
        try:
            if self._taken < YIELD_EVERY:
                try:
                    env = self._stream.receive_nowait()
                except anyio.WouldBlock:
                    pass
                else:
                    self._taken += 1
                    return env
            self._taken = 0
            return await self._stream.receive()
        except anyio.EndOfStream:
            return None


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    name: str
    handled: int
    errors: int
    malformed: int
    crashes: int
    running: bool


class Server:
    """Base class of every server (drivers, cache, file systems, VFS)."""

    protocol: ClassVar[Any] = None
    concurrent: ClassVar[bool] = False
    inbox_capacity: ClassVar[int] = 256
    max_restarts: ClassVar[int] = 8
    _handler_table: ClassVar[dict[type, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, fn in vars(klass).items():
                for tp in getattr(fn, "_handles", ()):
                    table[tp] = attr
        cls._handler_table = table

    def __init__(self, name: str, router: Router) -> None:
        self.name = name
        self.router = router
        # Decoder first: an unusable protocol must fail before the port is registered.
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(self.protocol)
        self.endpoint: Endpoint = router.register(name, self.inbox_capacity)
        self._handlers: dict[type, Callable[[Envelope, Any], Awaitable[Any]]] = {
            tp: getattr(self, attr) for tp, attr in self._handler_table.items()
        }
        self._stopped = anyio.Event()
        # A sequential server's handler and its teardown take turns: a teardown (a file
        # system's unmount: FSInfo, clean flag) beside an operation still in flight would
        # write the clean flag over an operation's half-done changes.
        # fast_acquire: an uncontended turn (the usual case) costs no event-loop turn.
        self._turn = anyio.Lock(fast_acquire=True)
        self._running = False
        self._handled = self._errors = self._malformed = self._crashes = 0
        self.log = log.bind(server=name)

    # ----------------------------------------------------------- hooks to override
    async def setup(self) -> None:
        """Runs before the server reports started (e.g. mount, identify the device)."""

    async def teardown(self) -> None:
        """Runs at shutdown while the servers it depends on are still running (flush)."""

    async def background(self) -> None:
        """Long-running work beside the inbox (periodic writeback); cancelled at stop."""

    async def restart(self) -> None:
        """Reset state after a crash; in-flight calls have already been failed."""

    # ------------------------------------------------------------------ lifecycle
    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until the inbox is closed by :meth:`stop`; restart after crashes."""
        await self.setup()
        self._running = True
        task_status.started()
        try:
            while True:
                try:
                    await self._run_once()
                    return
                except Exception as exc:  # supervision boundary: anything a handler raised
                    if not await self._recover(exc):
                        return
        finally:
            self._running = False
            self._stopped.set()

    async def _recover(self, exc: Exception) -> bool:
        self._crashes += 1
        self.log.error("server crashed", crashes=self._crashes, exc_info=exc)
        self.router.fail_pending(self.name, ServerCrashed(f"server {self.name} crashed: {exc!r}"))
        if self._crashes > self.max_restarts:
            self.log.critical("server gave up after repeated crashes", crashes=self._crashes)
            self.router.unregister(self.name)
            return False
        await self.restart()
        return True

    async def _run_once(self) -> None:
        inbox = _Inbox(self.endpoint.inbox)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.background)
            if self.concurrent:
                await self._serve_concurrently(inbox)
            else:
                while (env := await inbox.take()) is not None:
                    current_corr.set(env.corr)
                    async with self._turn:
                        await self._dispatch(env)
            outer.cancel_scope.cancel()

    async def _serve_concurrently(self, inbox: _Inbox) -> None:
        """One plain asyncio task per message, supervised here like a task group would.

        A task group's ``start_soon`` (task handle, cancel scope and bookkeeping per
        task) cost more than the handling of most messages. The rules stay those of
        a task group: a handler's crash stops the intake, cancels the other handlers
        and is raised once they are done; a closed inbox waits for every handler; a
        cancelled server cancels them all and waits for them too.
        """
        handlers: set[asyncio.Task[None]] = set()
        crashes: list[BaseException] = []
        with anyio.CancelScope() as intake:

            def finished(task: asyncio.Task[None]) -> None:
                handlers.discard(task)
                if not task.cancelled() and (exc := task.exception()) is not None:
                    crashes.append(exc)
                    intake.cancel()

            loop = asyncio.get_running_loop()
            try:
                while (env := await inbox.take()) is not None:
                    current_corr.set(env.corr)
                    task = loop.create_task(self._dispatch(env))
                    handlers.add(task)
                    task.add_done_callback(finished)
            except BaseException:
                for task in handlers:
                    task.cancel()
                raise
            finally:
                if crashes:
                    for task in handlers:
                        task.cancel()
                if handlers:
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait(set(handlers))
        if crashes:
            raise crashes[0]

    async def stop(self) -> None:
        """Run ``teardown``, close the inbox, wait for the loop to drain, unregister.

        A sequential server's ``teardown`` waits for the handler in flight (bounded by
        that handler's own call timeouts) and runs before the next one.
        """
        if self._running:
            try:
                async with self._turn:
                    await self.teardown()
            finally:
                port = self.router.ports.get(self.name)
                if port is not None and port.outbox is not None:
                    port.outbox.close()
                await self._stopped.wait()
        self.router.unregister(self.name)

    # ----------------------------------------------------------------- dispatching
    async def _dispatch(self, env: Envelope) -> None:
        try:
            msg = self._decoder.decode(env.body)
        except Exception as exc:  # decoding has no side effects: any failure is a bad body
            self._malformed += 1
            self._reject(env, f"cannot decode {env.type} from {env.src}: {exc}")
            return
        if message_type(msg) != env.type:  # the router allowed env.type, not what the body holds
            self._malformed += 1
            self.router.counters.count_refusal(env.type)
            self._reject(env, f"{env.type} from {env.src} carries a {message_type(msg)} body")
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            self._malformed += 1
            self._reject(env, f"{self.name} does not handle {type(msg).__name__}")
            return
        tracer = self.router.tracer
        start = time.monotonic_ns() if tracer.enabled else 0
        try:
            if tracer.enabled:  # a tracer with a sink has loaded structlog already
                from structlog.contextvars import bound_contextvars

                with bound_contextvars(corr=env.corr):
                    result = await handler(env, msg)
            else:
                result = await handler(env, msg)
        except OSError as exc:
            self._errors += 1
            self.endpoint.reply_error(env, exc)
            return
        except Exception as exc:
            self.endpoint.reply_error(
                env, ServerCrashed(f"{self.name} crashed on {env.type}: {exc!r}")
            )
            raise
        finally:
            if tracer.enabled:
                tracer.span(self.name, env.type, env.id, env.corr, start, time.monotonic_ns())
        self._handled += 1
        if result is DEFERRED or env.kind != CALL:
            return
        self.endpoint.reply(env, _OK if result is None else result)

    def _reject(self, env: Envelope, why: str) -> None:
        if env.kind == CALL:
            self.endpoint.reply_error(env, MalformedMessage(why))
        else:
            self.log.warning("rejected message", why=why, src=env.src)

    def reply(self, request: Envelope, msg: msgspec.Struct | None = None) -> None:
        """Answer a deferred call."""
        self.endpoint.reply(request, _OK if msg is None else msg)

    def reply_error(self, request: Envelope, exc: BaseException) -> None:
        self.endpoint.reply_error(request, exc)

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            self.name, self._handled, self._errors, self._malformed, self._crashes, self._running
        )
