"""Trace viewers: turn a ``--trace`` JSON-lines file into Perfetto, Mermaid or a summary.

Pure library code (no awaiting, no global state); the CLI's ``microkernel trace
TRACE.jsonl --format perfetto|mermaid|summary`` is a thin shell around
:func:`render`.

Pipeline::

    parse(path or lines) -> Trace            typed records + counts of skipped lines
    to_perfetto(trace)   -> dict             Chrome trace-event JSON object
    mermaid_diagrams(trace, corr=...) -> [str]
    summarize(trace)     -> Summary          numbers; render_summary() prints them

Input lines are the events :mod:`microkernel.trace` writes (``msg``, ``span``,
``copy``), each a JSON object whose ``event`` key is the tag. Unknown keys are
ignored, other structlog events are counted as ``other_events`` and skipped,
lines that are not JSON are counted as ``not_json``, and lines with a known
event but missing or mistyped fields as ``malformed``.

Percentiles use the nearest-rank method: the p-th percentile of ``n`` sorted
values is the value at rank ``ceil(p * n / 100)`` (1-based), so every reported
number is an observed one and can be checked by hand.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import msgspec

from microkernel.errors import KernelError

__all__ = [
    "FORMATS",
    "CopyEvent",
    "LatencyStats",
    "MsgEvent",
    "ParseStats",
    "Record",
    "SpanEvent",
    "Summary",
    "Trace",
    "TraceViewError",
    "iter_records",
    "mermaid_diagrams",
    "parse",
    "percentile",
    "render",
    "render_mermaid",
    "render_perfetto",
    "render_summary",
    "summarize",
    "syscall_kinds",
    "to_perfetto",
]

FORMATS = ("perfetto", "mermaid", "summary")


class TraceViewError(KernelError):
    """A trace cannot be rendered as asked (unknown format, unknown correlation id)."""

    default_errno = errno.EINVAL


# --------------------------------------------------------------------------- records


class MsgEvent(msgspec.Struct, frozen=True, gc=False, tag_field="event", tag="msg"):
    """One delivered message."""

    src: str
    dst: str
    msg: str
    id: int
    t_ns: int
    corr: int = 0
    size: int = 0
    kind: str = "send"  # "send" | "call" | "reply" | "error"; other values are kept as-is
    reply_to: int = 0


class SpanEvent(msgspec.Struct, frozen=True, gc=False, tag_field="event", tag="span"):
    """A server handling a message (or doing DMA, waiting, copying) from start to end."""

    server: str
    name: str
    start_ns: int
    end_ns: int
    id: int = 0
    corr: int = 0

    @property
    def dur_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


class CopyEvent(msgspec.Struct, frozen=True, gc=False, tag_field="event", tag="copy"):
    """A counted copy of file data."""

    server: str
    reason: str
    bytes: int
    t_ns: int = 0
    corr: int = 0


Record = MsgEvent | SpanEvent | CopyEvent

_KNOWN_EVENTS = frozenset({"msg", "span", "copy"})
_decoder: msgspec.json.Decoder[Record] = msgspec.json.Decoder(Record)


@dataclass
class ParseStats:
    """What happened to each input line."""

    lines: int = 0  # non-blank lines seen
    records: int = 0  # lines decoded into a record
    blank: int = 0
    not_json: int = 0  # skipped: not a JSON document
    other_events: int = 0  # skipped: JSON, but not a trace event (another log line, no "event")
    malformed: int = 0  # skipped: a trace event with missing or mistyped fields

    @property
    def skipped(self) -> int:
        return self.not_json + self.other_events + self.malformed


@dataclass
class Trace:
    """The records of one trace file, in file order."""

    messages: list[MsgEvent] = field(default_factory=list)
    spans: list[SpanEvent] = field(default_factory=list)
    copies: list[CopyEvent] = field(default_factory=list)
    stats: ParseStats = field(default_factory=ParseStats)

    def only(self, corr: int) -> Trace:
        """The records caused by one system call (same parse counts)."""
        return Trace(
            [m for m in self.messages if m.corr == corr],
            [s for s in self.spans if s.corr == corr],
            [c for c in self.copies if c.corr == corr],
            self.stats,
        )


Source = str | os.PathLike[str] | Iterable[str] | Iterable[bytes] | Trace


def _classify_failure(line: bytes | str, stats: ParseStats) -> None:
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        stats.not_json += 1
        return
    if isinstance(obj, dict) and obj.get("event") in _KNOWN_EVENTS:
        stats.malformed += 1
    else:
        stats.other_events += 1


def iter_records(lines: Iterable[str] | Iterable[bytes], stats: ParseStats) -> Iterator[Record]:
    """Decode each line into a record, counting (in ``stats``) the lines skipped."""
    decode = _decoder.decode
    for line in lines:
        if not line.strip():
            stats.blank += 1
            continue
        stats.lines += 1
        try:
            record = decode(line)
        except msgspec.DecodeError:  # ValidationError is a DecodeError too
            _classify_failure(line, stats)
            continue
        stats.records += 1
        yield record


def parse(source: Source) -> Trace:
    """Read a trace: a path (``str`` or ``PathLike``), an iterable of lines, or a ``Trace``."""
    if isinstance(source, Trace):
        return source
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            return _collect(f)
    return _collect(source)


def _collect(lines: Iterable[str] | Iterable[bytes]) -> Trace:
    trace = Trace()
    for record in iter_records(lines, trace.stats):
        if isinstance(record, MsgEvent):
            trace.messages.append(record)
        elif isinstance(record, SpanEvent):
            trace.spans.append(record)
        else:
            trace.copies.append(record)
    return trace


def _ordered_messages(trace: Trace) -> list[MsgEvent]:
    # stable: equal timestamps keep file order
    return sorted(trace.messages, key=lambda m: m.t_ns)


# --------------------------------------------------------------------------- perfetto

PID = 1
MSG_SLICE_NS = 1000  # width of the slice marking a send (or an unhandled delivery)

_LAYER_RANK = (
    ("proc:", 0),
    ("vfs", 1),
    ("fat", 2),
    ("cache", 3),
    ("nvme", 4),
    ("ahci", 4),
    ("ide", 4),
    ("ram", 4),
)


def _layer(server: str) -> int:
    for prefix, rank in _LAYER_RANK:
        if server.startswith(prefix):
            return rank
    return 5


class _SpanIndex:
    """Find the innermost span of one server that encloses an instant."""

    def __init__(self, spans: list[SpanEvent]) -> None:
        self.spans = sorted(spans, key=lambda s: (s.start_ns, -s.end_ns))
        self.starts = [s.start_ns for s in self.spans]
        self.max_end: list[int] = []
        running = -(2**63)
        for s in self.spans:
            running = max(running, s.end_ns)
            self.max_end.append(running)

    def enclosing(self, t: int) -> SpanEvent | None:
        j = bisect.bisect_right(self.starts, t) - 1
        while j >= 0 and self.max_end[j] > t:
            s = self.spans[j]
            if s.start_ns <= t < s.end_ns:
                return s
            j -= 1
        return None


@dataclass
class _Slice:
    server: str
    start: int
    end: int
    name: str
    cat: str
    args: dict[str, object]
    lane: int = 0


def _assign_lanes(slices: list[_Slice]) -> int:
    """Give each slice a lane so that slices on one lane nest properly; return the lane count."""
    lanes: list[list[int]] = []  # per lane, a stack of open end times
    for sl in sorted(slices, key=lambda s: (s.start, -s.end)):
        for idx, stack in enumerate(lanes):
            while stack and stack[-1] <= sl.start:
                stack.pop()
            if not stack or stack[-1] >= sl.end:
                stack.append(sl.end)
                sl.lane = idx
                break
        else:
            sl.lane = len(lanes)
            lanes.append([sl.end])
    return max(1, len(lanes))


_AUX_SPANS = frozenset({"wait", "dma", "copy"})


def _us(t_ns: int, t0: int) -> float:
    return (t_ns - t0) / 1000


def to_perfetto(source: Source, *, process_name: str = "microkernel") -> dict[str, object]:
    """Build a Chrome trace-event JSON object (what Perfetto's UI and chrome://tracing open).

    One process; one thread track per server (plus extra lanes ``"server #2"`` ... when a
    server handles overlapping requests, since slices on one track must nest). Spans are
    complete (``X``) events; each message is a short ``X`` slice on the sender with a flow
    arrow (``s`` on the sender at the send, ``f`` with ``bp: "e"`` on the receiver: just
    inside the span handling the message, else at the delivery inside whatever span of the
    receiver covers it, else on a short ``recv`` slice). Flow ids are unique and the events
    are sorted by time with slices before the flow points that bind to them, so a sequential
    importer binds every arrow. Message slices are clipped so they never force a new lane:
    at most ``MSG_SLICE_NS`` long, ending before the next activity of their server and
    inside the span they sit in. Copies are instant events plus a cumulative ``bytes_copied`` counter.
    Timestamps are microseconds since the earliest event (``otherData.t0_ns``).
    """
    trace = parse(source)
    times = [m.t_ns for m in trace.messages]
    times += [s.start_ns for s in trace.spans]
    times += [c.t_ns for c in trace.copies]
    t0 = min(times, default=0)

    first_seen: dict[str, int] = {}

    def see(name: str) -> None:
        first_seen.setdefault(name, len(first_seen))

    for m in _ordered_messages(trace):
        see(m.src)
        see(m.dst)
    for s in trace.spans:
        see(s.server)
    for c in trace.copies:
        see(c.server)

    spans_by_server: dict[str, list[SpanEvent]] = defaultdict(list)
    for s in trace.spans:
        spans_by_server[s.server].append(s)
    index = {server: _SpanIndex(spans) for server, spans in spans_by_server.items()}
    # The span handling a message: same server and id, the earliest one, where a span named
    # after a message type beats the auxiliary "wait"/"dma"/"copy" spans of that id.
    handler: dict[tuple[str, int], SpanEvent] = {}
    for s in sorted(trace.spans, key=lambda s: (s.name in _AUX_SPANS, s.start_ns)):
        if s.id:
            handler.setdefault((s.server, s.id), s)

    slices: list[_Slice] = []
    span_slice: dict[int, _Slice] = {}  # id(SpanEvent) -> its slice
    for s in trace.spans:
        sl = _Slice(
            s.server,
            s.start_ns,
            max(s.start_ns, s.end_ns),
            s.name,
            "span",
            {"id": s.id, "corr": s.corr},
        )
        span_slice[id(s)] = sl
        slices.append(sl)

    # Message slices are short and must not overlap what follows on their track (the next
    # message sent or received there, the next span starting there) nor outlive the span
    # they sit in, or they would need a lane of their own.
    activity: dict[str, list[int]] = defaultdict(list)
    for m in trace.messages:
        activity[m.src].append(m.t_ns)
        activity[m.dst].append(m.t_ns)
    for s in trace.spans:
        activity[s.server].append(s.start_ns)
    for times in activity.values():
        times.sort()
    empty = _SpanIndex([])

    def room(server: str, t: int) -> int:
        width = MSG_SLICE_NS
        outer = index.get(server, empty).enclosing(t)
        if outer is not None:
            width = min(width, outer.end_ns - t)
        times = activity[server]
        j = bisect.bisect_right(times, t)
        if j < len(times):
            width = min(width, times[j] - t)
        return width

    # (flow id, message, sender slice, flow-start ns, receiver slice, flow-end ns)
    flows: list[tuple[int, MsgEvent, _Slice, int, _Slice, int]] = []
    for n, m in enumerate(_ordered_messages(trace), start=1):
        args: dict[str, object] = {
            "id": m.id,
            "corr": m.corr,
            "size": m.size,
            "kind": m.kind,
            "src": m.src,
            "dst": m.dst,
            "reply_to": m.reply_to,
        }
        width = room(m.src, m.t_ns)
        send = _Slice(m.src, m.t_ns, m.t_ns + width, m.msg, "msg", args)
        slices.append(send)
        # the flow leaves at the send; it lands at the delivery, or just inside the handler
        start_at = m.t_ns

        target = handler.get((m.dst, m.id))
        if target is None or target.end_ns <= max(m.t_ns, target.start_ns):
            target = index.get(m.dst, empty).enclosing(m.t_ns)
            end_at = m.t_ns
        else:
            inside = target.start_ns + 1 < target.end_ns
            end_at = max(m.t_ns, target.start_ns + 1 if inside else target.start_ns)
        if target is not None:
            recv = span_slice[id(target)]
        else:
            width = room(m.dst, m.t_ns)
            recv = _Slice(m.dst, m.t_ns, m.t_ns + width, f"recv {m.msg}", "recv", args)
            slices.append(recv)
            end_at = m.t_ns
        flows.append((n, m, send, start_at, recv, end_at))

    by_server: dict[str, list[_Slice]] = defaultdict(list)
    for sl in slices:
        by_server[sl.server].append(sl)
    servers = sorted(first_seen, key=lambda name: (_layer(name), first_seen[name]))
    tids: dict[tuple[str, int], int] = {}
    meta: list[dict[str, object]] = [
        {
            "name": "process_name",
            "ph": "M",
            "ts": 0,
            "pid": PID,
            "tid": 0,
            "args": {"name": process_name},
        },
    ]
    for server in servers:
        for lane in range(_assign_lanes(by_server.get(server, []))):
            tid = len(tids) + 1
            tids[(server, lane)] = tid
            label = server if lane == 0 else f"{server} #{lane + 1}"
            meta.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "ts": 0,
                    "pid": PID,
                    "tid": tid,
                    "args": {"name": label},
                }
            )
            meta.append(
                {
                    "name": "thread_sort_index",
                    "ph": "M",
                    "ts": 0,
                    "pid": PID,
                    "tid": tid,
                    "args": {"sort_index": tid},
                }
            )

    events: list[dict[str, object]] = []
    for sl in sorted(slices, key=lambda s: (s.start, -s.end)):
        events.append(
            {
                "name": sl.name,
                "cat": sl.cat,
                "ph": "X",
                "ts": _us(sl.start, t0),
                "dur": (sl.end - sl.start) / 1000,
                "pid": PID,
                "tid": tids[(sl.server, sl.lane)],
                "args": sl.args,
            }
        )
    for n, m, send, start_at, recv, end_at in flows:
        common = {"name": m.msg, "cat": "flow", "id": n, "pid": PID}
        events.append(
            {**common, "ph": "s", "ts": _us(start_at, t0), "tid": tids[(send.server, send.lane)]}
        )
        events.append(
            {
                **common,
                "ph": "f",
                "bp": "e",
                "ts": _us(end_at, t0),
                "tid": tids[(recv.server, recv.lane)],
            }
        )
    copied: Counter[str] = Counter()
    for c in sorted(trace.copies, key=lambda c: c.t_ns):
        tid = tids[(c.server, 0)]
        copied[c.reason] += c.bytes
        events.append(
            {
                "name": f"copy {c.reason}",
                "cat": "copy",
                "ph": "i",
                "s": "t",
                "ts": _us(c.t_ns, t0),
                "pid": PID,
                "tid": tid,
                "args": {"bytes": c.bytes, "reason": c.reason, "corr": c.corr},
            }
        )
        events.append(
            {
                "name": "bytes_copied",
                "cat": "copy",
                "ph": "C",
                "ts": _us(c.t_ns, t0),
                "pid": PID,
                "tid": tid,
                "args": dict(copied),
            }
        )
    events.sort(key=_event_ts)
    return {
        "traceEvents": meta + events,
        "displayTimeUnit": "ns",
        "otherData": {"t0_ns": t0, "skipped_lines": trace.stats.skipped},
    }


def _event_ts(event: dict[str, object]) -> float:
    ts = event["ts"]
    return float(ts) if isinstance(ts, int | float) else 0.0


def render_perfetto(source: Source, out: TextIO) -> None:
    out.write(msgspec.json.encode(to_perfetto(source)).decode())
    out.write("\n")


# --------------------------------------------------------------------------- mermaid


def syscall_kinds(source: Source) -> dict[int, str]:
    """Map each correlation id to its syscall kind: the type of the first ``call`` a
    ``proc:*`` sender made under it. Ordered by first appearance."""
    kinds: dict[int, str] = {}
    for m in _ordered_messages(parse(source)):
        if m.corr and m.kind == "call" and m.src.startswith("proc:") and m.corr not in kinds:
            kinds[m.corr] = m.msg
    return kinds


def _alias(name: str, taken: set[str]) -> str:
    # "p_" prefix: no mermaid keyword starts with it, and ids cannot contain ':' or '-'
    base = "p_" + "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in name)
    alias, n = base, 2
    while alias in taken:
        alias, n = f"{base}_{n}", n + 1
    taken.add(alias)
    return alias


def _label_text(text: str) -> str:
    # message and description text ends at '#', ';' or a newline in mermaid's grammar
    return text.replace("#", " ").replace(";", ",").replace("\n", " ")


_ARROWS = {"send": "->>", "call": "->>", "reply": "-->>", "error": "--x"}


def _diagram(corr: int, messages: Sequence[MsgEvent], kind: str | None) -> str:
    aliases: dict[str, str] = {}
    taken: set[str] = set()
    for m in messages:
        for name in (m.src, m.dst):
            if name not in aliases:
                aliases[name] = _alias(name, taken)
    lines = [f"%% corr {corr}"]
    if kind is not None:
        lines.append(f"%% syscall {_label_text(kind)}")
    lines.append("sequenceDiagram")
    for name, alias in aliases.items():
        lines.append(f"    participant {alias} as {_label_text(name)}")
    for m in messages:
        arrow = _ARROWS.get(m.kind, "->>")
        label = _label_text(f"{m.msg} ({m.size} B)")
        if m.kind == "error":
            label = f"error: {label}"
        lines.append(f"    {aliases[m.src]}{arrow}{aliases[m.dst]}: {label}")
    lines.append(f"%% end corr {corr}")
    return "\n".join(lines) + "\n"


def mermaid_diagrams(source: Source, *, corr: int | None = None) -> list[str]:
    """Sequence diagrams: one for ``corr``, or, when it is None, one for the first
    correlation id of each distinct syscall kind."""
    trace = parse(source)
    by_corr: dict[int, list[MsgEvent]] = defaultdict(list)
    for m in _ordered_messages(trace):
        by_corr[m.corr].append(m)
    kinds = syscall_kinds(trace)
    if corr is not None:
        if corr not in by_corr:
            raise TraceViewError(_unknown_corr(corr, kinds))
        return [_diagram(corr, by_corr[corr], kinds.get(corr))]
    chosen: dict[str, int] = {}
    for c, kind in kinds.items():
        chosen.setdefault(kind, c)
    return [_diagram(c, by_corr[c], kind) for kind, c in chosen.items()]


def _unknown_corr(corr: int, kinds: dict[int, str]) -> str:
    """Say which ids there are, so the next try can succeed."""
    if not kinds:
        return f"no message with correlation id {corr}: the trace holds no system call"
    examples = ", ".join(f"{c} ({kind})" for c, kind in list(kinds.items())[:5])
    return (
        f"no message with correlation id {corr}; the trace has {len(kinds)} system calls, "
        f"e.g. {examples} (`--format summary` lists them)"
    )


def syscalls_by_kind(source: Source) -> dict[str, list[int]]:
    """Syscall kind -> its correlation ids, in order of first appearance."""
    ids: dict[str, list[int]] = defaultdict(list)
    for c, kind in syscall_kinds(source).items():
        ids[kind].append(c)
    return dict(ids)


def _id_list(ids: Sequence[int], shown: int = 8) -> str:
    text = " ".join(str(c) for c in ids[:shown])
    return text + (f" ... (+{len(ids) - shown})" if len(ids) > shown else "")


def render_mermaid(source: Source, out: TextIO, *, corr: int | None = None) -> None:
    diagrams = mermaid_diagrams(source, corr=corr)
    if not diagrams:
        out.write("%% no system call found in the trace\n")
    out.write("\n".join(diagrams))


# --------------------------------------------------------------------------- summary


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for an empty sequence)."""
    n = len(sorted_values)
    if n == 0:
        return 0
    rank = -(-p * n // 100)  # ceil without floats going wrong for exact products
    return sorted_values[min(n, max(1, int(rank))) - 1]


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, values: Iterable[int]) -> LatencyStats:
        v = sorted(values)
        return cls(
            len(v), percentile(v, 50), percentile(v, 90), percentile(v, 99), v[-1] if v else 0
        )


@dataclass
class Summary:
    pairs: dict[tuple[str, str], int]  # (src, dst) -> messages
    pair_bytes: dict[tuple[str, str], int]  # (src, dst) -> body bytes
    latency: dict[str, LatencyStats]  # request type -> reply t_ns - call t_ns (ns)
    errors: dict[str, int]  # request type -> error replies
    unanswered: dict[str, int]  # request type -> calls with no reply in the trace
    spans: dict[tuple[str, str], LatencyStats]  # (server, name) -> durations (ns)
    copied: dict[str, int]  # reason -> bytes
    stats: ParseStats
    syscalls: dict[str, list[int]] = field(default_factory=dict)  # kind -> correlation ids

    @property
    def bytes_copied(self) -> int:
        return sum(self.copied.values())


def summarize(source: Source) -> Summary:
    trace = parse(source)
    msgs = _ordered_messages(trace)
    pairs: Counter[tuple[str, str]] = Counter()
    pair_bytes: Counter[tuple[str, str]] = Counter()
    calls: dict[int, MsgEvent] = {}
    for m in msgs:
        pairs[(m.src, m.dst)] += 1
        pair_bytes[(m.src, m.dst)] += m.size
        if m.kind == "call":
            calls.setdefault(m.id, m)
    lat: dict[str, list[int]] = defaultdict(list)
    errors: Counter[str] = Counter()
    answered: set[int] = set()
    for m in msgs:
        if m.kind in ("reply", "error") and m.reply_to in calls and m.reply_to not in answered:
            call = calls[m.reply_to]
            answered.add(m.reply_to)
            lat[call.msg].append(m.t_ns - call.t_ns)
            if m.kind == "error":
                errors[call.msg] += 1
    unanswered: Counter[str] = Counter(c.msg for i, c in calls.items() if i not in answered)
    durs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for s in trace.spans:
        durs[(s.server, s.name)].append(s.dur_ns)
    copied: Counter[str] = Counter()
    for c in trace.copies:
        copied[c.reason] += c.bytes
    return Summary(
        pairs=dict(sorted(pairs.items())),
        pair_bytes=dict(sorted(pair_bytes.items())),
        latency={k: LatencyStats.of(v) for k, v in sorted(lat.items())},
        errors=dict(errors),
        unanswered=dict(unanswered),
        spans={k: LatencyStats.of(v) for k, v in sorted(durs.items())},
        copied=dict(sorted(copied.items())),
        stats=trace.stats,
        syscalls=syscalls_by_kind(trace),
    )


def _fmt_us(ns: int) -> str:
    return f"{ns / 1000:.3f}"


def _tables(s: Summary) -> list[tuple[str, list[str], list[list[str]]]]:
    """The summary as (title, header, rows) tables, shared by the plain and rich renderers."""
    pct = ["count", "p50 µs", "p90 µs", "p99 µs", "max µs"]

    def row(st: LatencyStats) -> list[str]:
        return [str(st.count), *(_fmt_us(x) for x in (st.p50, st.p90, st.p99, st.max))]

    st = s.stats
    return [
        (
            "System calls by correlation id (draw one with --format mermaid --corr ID)",
            ["syscall", "count", "correlation ids"],
            [[kind, str(len(ids)), _id_list(ids)] for kind, ids in s.syscalls.items()],
        ),
        (
            "Messages per (src, dst)",
            ["src", "dst", "messages", "bytes"],
            [[a, b, str(n), str(s.pair_bytes[(a, b)])] for (a, b), n in s.pairs.items()],
        ),
        (
            "Call latency (reply - call)",
            ["request", *pct, "errors", "unanswered"],
            [
                [k, *row(v), str(s.errors.get(k, 0)), str(s.unanswered.get(k, 0))]
                for k, v in s.latency.items()
            ]
            + [
                [k, "0", "-", "-", "-", "-", "0", str(n)]
                for k, n in sorted(s.unanswered.items())
                if k not in s.latency
            ],
        ),
        (
            "Span durations",
            ["server", "name", *pct],
            [[srv, name, *row(v)] for (srv, name), v in s.spans.items()],
        ),
        (
            "Bytes copied",
            ["reason", "bytes"],
            [[k, str(v)] for k, v in s.copied.items()] + [["total", str(s.bytes_copied)]],
        ),
        (
            "Input lines",
            ["lines", "records", "not_json", "other_events", "malformed", "skipped"],
            [
                [
                    str(st.lines),
                    str(st.records),
                    str(st.not_json),
                    str(st.other_events),
                    str(st.malformed),
                    str(st.skipped),
                ]
            ],
        ),
    ]


def _render_plain(tables: list[tuple[str, list[str], list[list[str]]]], out: TextIO) -> None:
    for title, header, rows in tables:
        out.write(f"{title}\n")
        widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
        for cells in (header, *rows):
            out.write(
                "  "
                + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
                + "\n"
            )
        if not rows:
            out.write("  (none)\n")
        out.write("\n")


def _render_rich(tables: list[tuple[str, list[str], list[list[str]]]], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    tty = out.isatty()
    console = Console(
        file=out, highlight=False, width=None if tty else 120, color_system="auto" if tty else None
    )
    for title, header, rows in tables:
        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            numeric = i > 0 and (not rows or all(_numeric(r[i]) for r in rows))
            table.add_column(name, justify="right" if numeric else "left")
        for cells in rows:
            table.add_row(*cells)
        console.print(table)


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.replace(".", "", 1).isdigit()


def render_summary(source: Source, out: TextIO, *, style: str = "auto") -> None:
    """Print the summary: ``style`` is "plain", "rich", or "auto" (rich when importable)."""
    tables = _tables(summarize(source))
    if style == "auto":
        try:
            import rich  # noqa: F401
        except ImportError:
            style = "plain"
        else:
            style = "rich"
    if style == "rich":
        _render_rich(tables, out)
    elif style == "plain":
        _render_plain(tables, out)
    else:
        raise TraceViewError(f"unknown summary style {style!r}: expected auto, plain or rich")


# --------------------------------------------------------------------------- entry point


def render(source: Source, fmt: str, *, corr: int | None = None, out: TextIO) -> None:
    """Render a trace (path, lines or parsed ``Trace``) as ``fmt`` ("perfetto", "mermaid",
    "summary") onto ``out``.

    ``corr`` picks one system call: its sequence diagram for "mermaid" (default: one per
    syscall kind), only its records for "perfetto" and "summary" (default: everything).
    """
    if fmt not in FORMATS:
        raise TraceViewError(f"unknown trace format {fmt!r}: expected one of {', '.join(FORMATS)}")
    trace = parse(source)
    if trace.stats.lines and not trace.stats.records:
        raise TraceViewError(
            f"not a microkernel trace: none of its {trace.stats.lines} lines is a trace record "
            "(write one with `microkernel --trace FILE COMMAND`)"
        )
    if fmt == "mermaid":
        render_mermaid(trace, out, corr=corr)
        return
    if corr is not None:
        if not any(m.corr == corr for m in trace.messages):
            raise TraceViewError(_unknown_corr(corr, syscall_kinds(trace)))
        trace = trace.only(corr)
    if fmt == "perfetto":
        render_perfetto(trace, out)
    else:
        render_summary(trace, out)
