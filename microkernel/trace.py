"""Logging and message tracing: the one structlog configuration of the system.

Two audiences, one function (:func:`configure_logging`):

* people get structlog's console renderer on stderr (warnings and lifecycle
  events such as a server crash with its traceback);
* machines get JSON lines in ``--trace FILE``: one ``msg`` event per delivered
  message (``src dst msg id corr size t_ns kind reply_to``), ``span`` events for
  handling, DMA and waits, ``copy`` events for counted copies.

Tracing is off the hot path unless asked for: callers test ``tracer.enabled``
(one attribute load) before building an event, so a disabled tracer costs less
than a filtered structlog call.

structlog itself is imported on the first event or the first trace, not at
import time: its console renderer pulls in rich (~0.1 s), which a one-shot
command that logs nothing should not pay. :data:`log` is a lazy stand-in that
binds like structlog's logger and becomes one on first use;
:func:`configure_logging` is applied then, or at once if structlog is loaded.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

import msgspec

if TYPE_CHECKING:
    from types import ModuleType

# The correlation id of the system call being served: every message a handler
# sends inherits it, so one read() can be followed across all servers.
current_corr: contextvars.ContextVar[int] = contextvars.ContextVar("corr", default=0)

_json = msgspec.json.Encoder()


def _serialize(event: dict[str, Any], **_: Any) -> str:
    return _json.encode(event).decode()


def _render_json(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return _json.encode(event).decode()


class Tracer:
    """Writes trace events as JSON lines when enabled; otherwise does nothing, cheaply."""

    __slots__ = ("_file", "_log", "enabled")

    def __init__(self, sink: IO[str] | None = None) -> None:
        self._file = sink
        self.enabled = sink is not None
        self._log: Any = None
        if sink is not None:
            structlog = _structlog()
            self._log = structlog.wrap_logger(
                structlog.WriteLogger(cast(TextIO, sink)),
                processors=[structlog.contextvars.merge_contextvars, _render_json],
                wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                cache_logger_on_first_use=True,
            )

    def message(
        self, src: str, dst: str, msg: str, id: int, corr: int, size: int, kind: str, reply_to: int
    ) -> None:
        self._log.info(
            "msg",
            src=src,
            dst=dst,
            msg=msg,
            id=id,
            corr=corr,
            size=size,
            kind=kind,
            reply_to=reply_to,
            t_ns=time.monotonic_ns(),
        )

    def span(self, server: str, name: str, id: int, corr: int, start_ns: int, end_ns: int) -> None:
        self._log.info(
            "span", server=server, name=name, id=id, corr=corr, start_ns=start_ns, end_ns=end_ns
        )

    def copy(self, server: str, reason: str, nbytes: int) -> None:
        self._log.info(
            "copy",
            server=server,
            reason=reason,
            bytes=nbytes,
            corr=current_corr.get(),
            t_ns=time.monotonic_ns(),
        )

    def close(self) -> None:
        if self._file is not None and self._file not in (sys.stdout, sys.stderr):
            self._file.close()
        self.enabled = False


DISABLED = Tracer()


def configure_logging(
    *, level: str = "warning", trace_path: str | None = None, json_console: bool = False
) -> Tracer:
    """Configure structlog for people (console) and return the tracer for machines (JSON lines).

    The configuration is applied when structlog is first needed (see the module's
    docstring), or now if it is already loaded.
    """
    global _pending
    _pending = (level, json_console)
    if "structlog" in sys.modules:
        _structlog()
    if trace_path is None:
        return Tracer()
    return Tracer(open(trace_path, "w", encoding="utf-8", buffering=1 << 16))


_pending: tuple[str, bool] | None = None  # configure_logging's settings, not yet applied


def _structlog() -> ModuleType:
    """structlog, imported now if need be, with any pending configuration applied."""
    global _pending
    import structlog

    if _pending is not None:
        level, json_console = _pending
        _pending = None
        _configure(structlog, level, json_console)
    return structlog


def _configure(structlog: Any, level: str, json_console: bool) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_serialize)
        if json_console
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            cast(Any, structlog.processors.dict_tracebacks if json_console else _passthrough),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _passthrough(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


class LazyLogger:
    """Binds like a structlog logger; imports structlog and becomes one on the first event."""

    __slots__ = ("_context", "_logger")

    def __init__(self, context: dict[str, Any] | None = None) -> None:
        self._context = context or {}
        self._logger: Any = None

    def bind(self, **values: Any) -> LazyLogger:
        return LazyLogger({**self._context, **values})

    def __getattr__(self, name: str) -> Any:  # debug, info, warning, error, critical, ...
        if self._logger is None:
            self._logger = _structlog().get_logger("microkernel").bind(**self._context)
        return getattr(self._logger, name)


log = LazyLogger()
