"""IPC: envelopes, the router, and endpoints (``send``, ``call``, ``reply``).

A message travels as an :class:`Envelope` whose body is msgpack bytes encoded by
msgspec; the receiver decodes it with its own typed decoder (see
:mod:`microkernel.server`). The router

* stamps ``src`` (an endpoint can only send as itself: no forged identities),
* enforces the capability table from the boot configuration,
* rejects unknown ports with a typed error,
* counts and (optionally) traces every delivered message,
* completes calls by resolving the caller's future directly: a reply never
  waits in the caller's inbox, which is 2-3 times cheaper than a reply stream.

Inboxes are bounded anyio memory object streams, so a fast sender is slowed
down instead of memory growing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from microkernel.errors import (
    CallTimeout,
    CapabilityDenied,
    ForgedReply,
    MessageDenied,
    PortNotFound,
    ServerCrashed,
    ServerStopped,
    error_from_wire,
    error_to_wire,
)
from microkernel.protocol import ErrorReply
from microkernel.stats import Counters
from microkernel.trace import DISABLED, Tracer, current_corr

SEND: Final = 0
CALL: Final = 1
REPLY: Final = 2
ERROR: Final = 3
KIND_NAMES: Final = ("send", "call", "reply", "error")

T = TypeVar("T")


class Envelope(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Routing header plus msgpack body. ``reply_to`` is the id a reply answers (0 otherwise)."""

    src: str
    dst: str
    id: int
    corr: int
    reply_to: int
    kind: int
    type: str
    body: bytes


_encoder = msgspec.msgpack.Encoder()
_reply_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_error_decoder = msgspec.msgpack.Decoder(ErrorReply)


_type_names: dict[type, str] = {}


def message_type(msg: msgspec.Struct) -> str:
    """The type a message travels as: its msgspec tag, the very name the receiver decodes by.

    Taking the tag (not the class name) means a sender cannot dress one message
    type up as another by naming its class after an allowed one; the receiving
    server checks the decoded type against this name too (:mod:`microkernel.server`).
    """
    cls = type(msg)
    name = _type_names.get(cls)
    if name is None:
        tag = cls.__struct_config__.tag
        name = cls.__name__ if tag is None else str(tag)
        if len(_type_names) < 4096:  # the protocols' classes; made-up ones are not kept
            _type_names[cls] = name
    return name


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def reply_decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    """One long-lived decoder per reply type."""
    dec = _reply_decoders.get(tp)
    if dec is None:
        dec = _reply_decoders[tp] = msgspec.msgpack.Decoder(tp)
    return dec


#: A capability table: sender pattern -> receiver patterns (every message type), or
#: sender pattern -> {receiver pattern: [message type patterns]}. Patterns are shell wildcards.
CapabilityTable = Mapping[str, Iterable[str] | Mapping[str, Iterable[str]]]

ALLOWED: Final = 0
PORT_DENIED: Final = 1
TYPE_DENIED: Final = 2
FORGED_REPLY: Final = 3
MEMO_PER_SENDER: Final = 512  # remembered answers per sender; past it, answers are recomputed


class Capabilities:
    """Who may send which message types to whom; the router asks once per (src, dst, type).

    Replies are always allowed (answering a call you received needs no
    capability; the router checks that the replier is the callee instead). A
    table of ``None`` allows everything (for tests). Answers are remembered, so
    the hot path is one dict lookup; :meth:`forget` drops a departed port's.
    """

    def __init__(self, table: CapabilityTable | None) -> None:
        self._rules = None if table is None else _normalise(table)
        # sender -> {(receiver, type): verdict}: a departed sender's answers go in one pop
        self._memo: dict[str, dict[tuple[str, str], int]] = {}
        self._asked: dict[str, set[str]] = {}  # receiver -> senders with answers about it

    def verdict(self, src: str, dst: str, type_: str) -> int:
        """``ALLOWED``, ``PORT_DENIED`` (no rule reaches dst) or ``TYPE_DENIED`` (not this type)."""
        if self._rules is None:
            return ALLOWED
        known = self._memo.get(src)
        if known is None:
            known = self._memo[src] = {}
        verdict = known.get((dst, type_))
        if verdict is None:
            verdict = self._decide(src, dst, type_)
            if len(known) < MEMO_PER_SENDER:  # a sender inventing type names gains no memory
                known[dst, type_] = verdict
                self._asked.setdefault(dst, set()).add(src)
        return verdict

    def allows(self, src: str, dst: str, type_: str) -> bool:
        return self.verdict(src, dst, type_) == ALLOWED

    def _decide(self, src: str, dst: str, type_: str) -> int:
        assert self._rules is not None
        verdict = PORT_DENIED
        for s, d, types in self._rules:
            if fnmatch.fnmatchcase(src, s) and fnmatch.fnmatchcase(dst, d):
                if any(fnmatch.fnmatchcase(type_, t) for t in types):
                    return ALLOWED
                verdict = TYPE_DENIED
        return verdict

    def forget(self, port: str) -> None:
        """Drop remembered answers about a port that went away (processes come and go)."""
        for dst, _ in self._memo.pop(port, {}):
            self._asked.get(dst, set()).discard(port)
        for src in self._asked.pop(port, ()):
            known = self._memo.get(src, {})
            for key in [k for k in known if k[0] == port]:
                del known[key]

    def remembered(self) -> int:
        """How many answers are remembered (bounded by the live ports, whatever the churn)."""
        return sum(len(known) for known in self._memo.values())


def _normalise(table: CapabilityTable) -> list[tuple[str, str, tuple[str, ...]]]:
    """Flatten both table forms to (sender, receiver, type patterns) rules."""
    rules: list[tuple[str, str, tuple[str, ...]]] = []
    for src, targets in table.items():
        if isinstance(targets, Mapping):
            rules.extend((src, dst, tuple(types)) for dst, types in targets.items())
        else:
            rules.extend((src, dst, ("*",)) for dst in targets)
    return rules


class _Pending:
    """A call in flight: only ``dst`` may answer it, and only to ``caller``."""

    __slots__ = ("caller", "dst", "future")

    def __init__(self, caller: str | None, dst: str, future: asyncio.Future[Envelope]) -> None:
        self.caller = caller
        self.dst = dst
        self.future = future


class Port:
    """A registered name; servers have a bounded inbox, processes only receive replies."""

    __slots__ = ("inbox", "name", "outbox")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.outbox: MemoryObjectSendStream[Envelope] | None = None
        self.inbox: MemoryObjectReceiveStream[Envelope] | None = None
        if capacity > 0:
            self.outbox, self.inbox = anyio.create_memory_object_stream[Envelope](capacity)


class Router:
    """Delivers envelopes between ports, enforcing capabilities, counting and tracing."""

    def __init__(
        self,
        *,
        capabilities: CapabilityTable | None = None,
        counters: Counters | None = None,
        tracer: Tracer = DISABLED,
    ) -> None:
        self.ports: dict[str, Port] = {}
        self.capabilities = Capabilities(capabilities)
        self.counters = counters if counters is not None else Counters()
        self.tracer = tracer
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}

    # ------------------------------------------------------------ registration
    def register(self, name: str, capacity: int = 256) -> Endpoint:
        """Register a port; ``capacity=0`` makes a reply-only port (a user process)."""
        if name in self.ports:
            raise ValueError(f"port {name!r} is already registered")
        self.ports[name] = Port(name, capacity)
        return Endpoint(self, name)

    def unregister(self, name: str) -> None:
        port = self.ports.pop(name, None)
        if port is not None and port.outbox is not None:
            port.outbox.close()
        self.capabilities.forget(name)
        self.fail_pending(name, ServerStopped(f"port {name} was closed"))

    def next_id(self) -> int:
        return next(self._ids)

    # ---------------------------------------------------------------- delivery
    def _account(self, env: Envelope) -> None:
        c = self.counters
        c.messages_total += 1
        c.messages_by_type[env.type] += 1
        if self.tracer.enabled:
            self.tracer.message(
                env.src,
                env.dst,
                env.type,
                env.id,
                env.corr,
                len(env.body),
                KIND_NAMES[env.kind],
                env.reply_to,
            )

    def _route(self, env: Envelope) -> MemoryObjectSendStream[Envelope]:
        # Authority first: a refused sender learns nothing, not even whether the port exists.
        verdict = self.capabilities.verdict(env.src, env.dst, env.type)
        if verdict != ALLOWED:
            raise self._refuse(env, verdict)
        port = self.ports.get(env.dst)
        if port is None or port.outbox is None:
            raise PortNotFound(f"no server listens on port {env.dst!r} (message {env.type})")
        self._account(env)
        return port.outbox

    def _refuse(self, env: Envelope, verdict: int) -> OSError:
        """Count a refusal and explain it; the sender gets the error, the receiver nothing."""
        self.counters.count_refusal(env.type)
        if self.tracer.enabled:
            self.tracer.message(
                env.src, env.dst, env.type, env.id, env.corr, len(env.body), "refused", 0
            )
        if verdict == PORT_DENIED:
            return CapabilityDenied(f"{env.src} may not send to {env.dst} (message {env.type})")
        if verdict == TYPE_DENIED:
            return MessageDenied(f"{env.src} may not send {env.type} to {env.dst}")
        return ForgedReply(
            f"{env.src} may not answer call {env.reply_to} (it was not sent to {env.src})"
        )

    async def deliver(self, env: Envelope) -> None:
        """Queue ``env``, waiting only while the receiver's inbox is full.

        The inbox usually has room, and then the envelope goes in without the
        scheduling checkpoint ``send`` pays (a whole event-loop turn per message):
        a caller yields anyway while it awaits the reply.
        """
        outbox = self._route(env)
        try:
            try:
                outbox.send_nowait(env)
            except anyio.WouldBlock:
                await outbox.send(env)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ServerStopped(f"port {env.dst} closed while sending {env.type}") from None

    def deliver_nowait(self, env: Envelope) -> None:
        """Deliver without waiting; raises ``anyio.WouldBlock`` when the inbox is full."""
        outbox = self._route(env)
        try:
            outbox.send_nowait(env)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ServerStopped(f"port {env.dst} closed while sending {env.type}") from None

    def complete(self, env: Envelope) -> None:
        """Hand a reply to the waiting caller's future (late replies after a timeout are dropped).

        Only the port a call was sent to may answer it, and only to its caller:
        a guessed call id gains a forger nothing but a ``ForgedReply`` error.
        """
        pending = self._pending.get(env.reply_to)
        if pending is not None and (
            pending.dst != env.src or (pending.caller is not None and pending.caller != env.dst)
        ):
            raise self._refuse(env, FORGED_REPLY)
        self._pending.pop(env.reply_to, None)
        self._account(env)
        if pending is not None and not pending.future.done():
            pending.future.set_result(env)

    def expect_reply(
        self, call_id: int, dst: str, caller: str | None = None
    ) -> asyncio.Future[Envelope]:
        """Register a call in flight; ``caller`` (when given) is the only port its reply may reach."""
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = _Pending(caller, dst, future)
        return future

    def forget(self, call_id: int) -> None:
        self._pending.pop(call_id, None)

    def fail_pending(self, dst: str, exc: OSError) -> int:
        """Fail every call in flight to ``dst`` (its server crashed or stopped)."""
        failed = [cid for cid, p in self._pending.items() if p.dst == dst]
        for cid in failed:
            pending = self._pending.pop(cid)
            if not pending.future.done():
                pending.future.set_exception(exc)
        return len(failed)

    def in_flight(self, dst: str | None = None) -> int:
        return sum(1 for p in self._pending.values() if dst is None or p.dst == dst)


class Endpoint:
    """A port's way to talk: ``send``, ``call``, ``reply``. The router stamps ``src``."""

    __slots__ = ("name", "router")

    def __init__(self, router: Router, name: str) -> None:
        self.router = router
        self.name = name

    @property
    def inbox(self) -> MemoryObjectReceiveStream[Envelope]:
        inbox = self.router.ports[self.name].inbox
        if inbox is None:
            raise PortNotFound(f"port {self.name} has no inbox")
        return inbox

    def _envelope(self, dst: str, msg: msgspec.Struct, kind: int, corr: int | None) -> Envelope:
        return Envelope(
            self.name,
            dst,
            self.router.next_id(),
            current_corr.get() if corr is None else corr,
            0,
            kind,
            message_type(msg),
            _encoder.encode(msg),
        )

    async def send(self, dst: str, msg: msgspec.Struct, *, corr: int | None = None) -> None:
        """One-way message (waits only if the receiver's inbox is full)."""
        await self.router.deliver(self._envelope(dst, msg, SEND, corr))

    def send_nowait(self, dst: str, msg: msgspec.Struct, *, corr: int | None = None) -> None:
        self.router.deliver_nowait(self._envelope(dst, msg, SEND, corr))

    async def call(
        self,
        dst: str,
        msg: msgspec.Struct,
        reply_type: type[T] | Any,
        *,
        timeout: float | None = 30.0,
        corr: int | None = None,
    ) -> T:
        """Request/reply. Error replies are raised as exceptions; no reply in time is ``CallTimeout``."""
        env = self._envelope(dst, msg, CALL, corr)
        router = self.router
        future = router.expect_reply(env.id, dst, self.name)
        # The deadline is a timer on the reply's future, not a cancel scope: entering and
        # leaving a scope per call cost more than the routing itself. The clock starts
        # before delivery, as a scope around both would, so a full inbox counts too.
        loop = asyncio.get_running_loop()
        deadline = math.inf if timeout is None else loop.time() + timeout
        timer = None if timeout is None else loop.call_at(deadline, _expire, future, timeout)
        try:
            try:
                router.deliver_nowait(env)
            except anyio.WouldBlock:  # a full inbox: wait for room, within the same deadline
                with anyio.fail_at(deadline):
                    await router.deliver(env)
            reply = await future
        except (_Expired, TimeoutError):
            raise CallTimeout(f"{dst} did not answer {env.type} within {timeout} s") from None
        finally:
            if timer is not None:
                timer.cancel()
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a deadline that fired mid-delivery is not "lost"
            router.forget(env.id)
        if reply.kind == ERROR:
            err = _error_decoder.decode(reply.body)
            raise error_from_wire(err.errno, err.message, err.kind)
        result: T = reply_decoder(reply_type).decode(reply.body)
        return result

    def reply(self, request: Envelope, msg: msgspec.Struct) -> None:
        """Answer a call (never blocks: the reply resolves the caller's future)."""
        self._answer(request, REPLY, message_type(msg), msg)

    def reply_error(self, request: Envelope, exc: BaseException) -> None:
        """Answer a call with an error as data (errno, message, kind)."""
        self._answer(request, ERROR, "ErrorReply", ErrorReply(*error_to_wire(exc)))

    def _answer(self, request: Envelope, kind: int, name: str, msg: msgspec.Struct) -> None:
        if request.kind != CALL:
            return
        self.router.complete(
            Envelope(
                self.name,
                request.src,
                self.router.next_id(),
                request.corr,
                request.id,
                kind,
                name,
                _encoder.encode(msg),
            )
        )


class _Expired(Exception):
    """A call's deadline passed before its reply came (becomes ``CallTimeout``)."""


def _expire(future: asyncio.Future[Envelope], timeout: float) -> None:
    if not future.done():
        future.set_exception(_Expired(timeout))


def now_ns() -> int:
    return time.monotonic_ns()


__all__ = [
    "CALL",
    "ERROR",
    "REPLY",
    "SEND",
    "Capabilities",
    "Endpoint",
    "Envelope",
    "Router",
    "ServerCrashed",
    "encode",
    "message_type",
    "now_ns",
    "reply_decoder",
]
