"""Trace viewers: Perfetto JSON validity, Mermaid diagrams, summary numbers, robustness."""

from __future__ import annotations

import io
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microkernel import traceview
from microkernel.traceview import (
    CopyEvent,
    LatencyStats,
    MsgEvent,
    SpanEvent,
    TraceViewError,
    mermaid_diagrams,
    parse,
    percentile,
    render,
    summarize,
    to_perfetto,
)

T0 = 5_000_000_000  # monotonic ns of the first event


def msg(
    src: str,
    dst: str,
    name: str,
    id: int,
    t: int,
    *,
    kind: str,
    corr: int = 7,
    size: int = 24,
    reply_to: int = 0,
) -> dict[str, Any]:
    return {
        "event": "msg",
        "src": src,
        "dst": dst,
        "msg": name,
        "id": id,
        "corr": corr,
        "size": size,
        "t_ns": T0 + t,
        "kind": kind,
        "reply_to": reply_to,
        # extra structlog keys, to be ignored
        "level": "info",
        "timestamp": "2024-01-01T00:00:00Z",
        "logger": "microkernel.trace",
    }


def span(server: str, name: str, id: int, start: int, end: int, corr: int = 7) -> dict[str, Any]:
    return {
        "event": "span",
        "server": server,
        "name": name,
        "id": id,
        "corr": corr,
        "start_ns": T0 + start,
        "end_ns": T0 + end,
    }


def copy(server: str, reason: str, nbytes: int, t: int, corr: int = 0) -> dict[str, Any]:
    return {
        "event": "copy",
        "server": server,
        "reason": reason,
        "bytes": nbytes,
        "t_ns": T0 + t,
        "corr": corr,
    }


# One read() miss (corr 7), following docs/architecture.md §4, in delivery order.
READ_FLOW: list[tuple[str, str, str, str]] = [
    ("proc:1", "vfs", "CachePart", "call"),
    ("vfs", "fat0", "MapRange", "call"),
    ("fat0", "cache", "CacheRead", "send"),
    ("fat0", "vfs", "MapRangeDone", "reply"),
    ("cache", "nvme0", "Read", "call"),
    ("nvme0", "cache", "IoDone", "reply"),
    ("cache", "vfs", "SectorsReady", "send"),
    ("vfs", "proc:1", "CachePartDone", "reply"),
]


def read_trace() -> list[dict[str, Any]]:
    """corr 7: a read() miss; corr 8: a failing stat(); corr 9: a read() hit."""
    return [
        msg("proc:1", "vfs", "CachePart", 1, 0, kind="call", size=24),
        span("vfs", "CachePart", 1, 1_000, 3_600),
        msg("vfs", "fat0", "MapRange", 2, 1_500, kind="call", size=32),
        span("fat0", "MapRange", 2, 2_000, 3_300),
        msg("fat0", "cache", "CacheRead", 3, 3_000, kind="send", size=40),
        msg("fat0", "vfs", "MapRangeDone", 4, 3_200, kind="reply", size=8, reply_to=2),
        span("cache", "CacheRead", 3, 3_100, 7_000),
        msg("cache", "nvme0", "Read", 5, 4_000, kind="call", size=48),
        span("nvme0", "dma", 0, 4_200, 5_700),
        span("nvme0", "Read", 5, 4_100, 6_000),
        msg("nvme0", "cache", "IoDone", 6, 5_800, kind="reply", size=16, reply_to=5),
        msg("cache", "vfs", "SectorsReady", 7, 6_500, kind="send", size=64),
        span("vfs", "SectorsReady", 7, 7_500, 8_500),
        msg("vfs", "proc:1", "CachePartDone", 8, 8_400, kind="reply", size=16, reply_to=1),
        copy("ide0", "pio", 4096, 9_000),
        copy("ide0", "bounce", 512, 9_100),
        copy("ahci0", "bounce", 512, 9_200),
        # a failing stat() from another process
        msg("proc:2", "vfs", "Stat", 9, 10_000, kind="call", corr=8, size=20),
        span("vfs", "Stat", 9, 10_100, 10_900, corr=8),
        msg("vfs", "proc:2", "ErrorReply", 10, 10_800, kind="error", corr=8, size=12, reply_to=9),
        # a second read(), a cache hit
        msg("proc:1", "vfs", "CachePart", 11, 20_000, kind="call", corr=9, size=24),
        span("vfs", "CachePart", 11, 20_100, 21_900, corr=9),
        msg(
            "vfs", "proc:1", "CachePartDone", 12, 22_000, kind="reply", corr=9, size=16, reply_to=11
        ),
    ]


def lines_of(events: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(e) for e in events]


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines_of(read_trace())) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- parsing


def test_parse_typed_records(trace_file: Path) -> None:
    trace = parse(trace_file)
    assert len(trace.messages) == 12
    assert len(trace.spans) == 8
    assert len(trace.copies) == 3
    first = trace.messages[0]
    assert first == MsgEvent(
        src="proc:1", dst="vfs", msg="CachePart", id=1, t_ns=T0, corr=7, size=24, kind="call"
    )
    assert isinstance(trace.spans[0], SpanEvent) and trace.spans[0].dur_ns == 2_600
    assert trace.copies[0] == CopyEvent(server="ide0", reason="pio", bytes=4096, t_ns=T0 + 9_000)
    assert trace.stats.records == 23 and trace.stats.skipped == 0
    # a str path and an iterable of lines (str or bytes) give the same records
    assert parse(str(trace_file)).messages == trace.messages
    assert parse(lines_of(read_trace())).spans == trace.spans
    assert parse([line.encode() for line in lines_of(read_trace())]).copies == trace.copies


def test_parse_robustness() -> None:
    good = lines_of(read_trace())
    garbage = [
        "not json at all",
        "{truncated",
        "",
        "   ",
        "[1, 2, 3]",
        '"a string"',
        json.dumps({"event": "server started", "server": "vfs", "level": "info"}),
        json.dumps({"no_event_key": 1}),
        json.dumps({"event": "rpc", "src": "a"}),  # unknown event kind
        json.dumps({"event": "msg", "src": "a"}),  # known kind, missing fields
        json.dumps({**read_trace()[0], "id": "one"}),  # known kind, mistyped field
        "\x00\xff binary",
    ]
    trace = parse(garbage[:6] + good + garbage[6:])
    st = trace.stats
    assert st.not_json == 3
    assert st.other_events == 5
    assert st.malformed == 2
    assert st.blank == 2
    assert st.skipped == 10
    assert st.records == len(good)
    assert len(trace.messages) == 12
    assert summarize(trace).stats.skipped == 10


def test_empty_trace_renders_everywhere(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    for fmt in traceview.FORMATS:
        out = io.StringIO()
        render(empty, fmt, out=out)
        assert out.getvalue()
    doc = to_perfetto(empty)
    check_trace_events(doc)
    s = summarize(empty)
    assert s.pairs == {} and s.latency == {} and s.spans == {} and s.bytes_copied == 0
    assert mermaid_diagrams(empty) == []


def test_render_errors(trace_file: Path) -> None:
    with pytest.raises(TraceViewError):
        render(trace_file, "svg", out=io.StringIO())
    with pytest.raises(TraceViewError):
        render(trace_file, "mermaid", corr=12345, out=io.StringIO())
    with pytest.raises(FileNotFoundError):
        render(trace_file.with_name("missing.jsonl"), "summary", out=io.StringIO())


# --------------------------------------------------------------------------- perfetto


def check_trace_events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate against the Chrome trace-event format; return the events."""
    json.loads(json.dumps(doc))  # plain JSON types only
    assert doc["displayTimeUnit"] == "ns"
    events: list[dict[str, Any]] = doc["traceEvents"]
    named_tids: set[int] = set()
    used_tids: set[int] = set()
    process_named = False
    open_stacks: dict[int, list[str]] = defaultdict(list)
    flows: dict[tuple[Any, str], Counter[str]] = defaultdict(Counter)
    flow_names: dict[tuple[Any, str], set[str]] = defaultdict(set)
    pids = set()
    for e in events:
        for key in ("name", "ph", "ts", "pid", "tid"):
            assert key in e, (key, e)
        assert isinstance(e["ts"], int | float) and e["ts"] >= 0
        pids.add(e["pid"])
        ph = e["ph"]
        if ph == "M":
            if e["name"] == "thread_name":
                named_tids.add(e["tid"])
                assert isinstance(e["args"]["name"], str) and e["args"]["name"]
            elif e["name"] == "process_name":
                process_named = True
            continue
        used_tids.add(e["tid"])
        if ph == "X":
            assert isinstance(e["dur"], int | float) and e["dur"] >= 0
        elif ph == "B":
            open_stacks[e["tid"]].append(e["name"])
        elif ph == "E":
            assert open_stacks[e["tid"]], f"E without B on tid {e['tid']}"
            open_stacks[e["tid"]].pop()
        elif ph in ("s", "f"):
            assert "id" in e and "cat" in e
            flows[(e["id"], e["cat"])][ph] += 1
            flow_names[(e["id"], e["cat"])].add(e["name"])
            if ph == "f":
                assert e.get("bp") == "e"
        elif ph == "i":
            assert e.get("s", "t") in ("t", "p", "g")
        elif ph == "C":
            assert all(isinstance(v, int | float) for v in e["args"].values())
        else:
            raise AssertionError(f"unexpected phase {ph!r}")
    assert all(not stack for stack in open_stacks.values()), "B without E"
    for flow, count in flows.items():
        assert count == Counter({"s": 1, "f": 1}), (flow, count)
        assert len(flow_names[flow]) == 1  # Perfetto keys v1 flows by (id, cat, name)
    assert used_tids <= named_tids, used_tids - named_tids
    assert process_named
    assert len(pids) <= 1
    return events


def check_nesting(events: list[dict[str, Any]]) -> None:
    """Complete events on one track must nest (Perfetto drops or misplaces overlapping ones)."""
    by_tid: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            by_tid[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    eps = 1e-9
    for tid, slices in by_tid.items():
        stack: list[float] = []
        for start, end in sorted(slices, key=lambda se: (se[0], -se[1])):
            while stack and stack[-1] <= start + eps:
                stack.pop()
            assert not stack or end <= stack[-1] + eps, f"overlap on tid {tid}"
            stack.append(end)


def check_flow_binding(events: list[dict[str, Any]]) -> None:
    """Replay the events in timestamp order the way Perfetto's importer binds v1 flows: an
    "s" or a "f" with bp "e" attaches to the innermost complete event open on its track at
    that time, and an "f" must come after its "s"."""
    open_slices: dict[int, list[float]] = defaultdict(list)
    started: set[Any] = set()
    for e in sorted((e for e in events if e["ph"] != "M"), key=lambda e: e["ts"]):
        stack = open_slices[e["tid"]]
        while stack and stack[-1] <= e["ts"]:
            stack.pop()
        if e["ph"] == "X":
            stack.append(e["ts"] + e["dur"])
        elif e["ph"] in ("s", "f"):
            assert stack, f"flow {e['ph']} {e['name']} has no enclosing slice on tid {e['tid']}"
            if e["ph"] == "s":
                started.add(e["id"])
            else:
                assert e["id"] in started, f"flow end before its start: {e}"


def thread_names(events: list[dict[str, Any]]) -> dict[int, str]:
    return {
        e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
    }


def test_perfetto_is_valid_trace_event_json(trace_file: Path) -> None:
    out = io.StringIO()
    render(trace_file, "perfetto", out=out)
    doc = json.loads(out.getvalue())
    events = check_trace_events(doc)
    check_nesting(events)
    check_flow_binding(events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    names = thread_names(events)
    servers = {"proc:1", "proc:2", "vfs", "fat0", "cache", "nvme0", "ide0", "ahci0"}
    assert set(names.values()) == servers  # one track each, no extra lanes needed
    tid_of = {v: k for k, v in names.items()}
    # tracks ordered by layer: processes, vfs, fat, cache, drivers
    assert tid_of["proc:1"] < tid_of["vfs"] < tid_of["fat0"] < tid_of["cache"] < tid_of["nvme0"]

    spans = [e for e in events if e["ph"] == "X" and e["cat"] == "span"]
    assert len(spans) == 8
    read = next(e for e in spans if e["name"] == "Read")
    assert read["tid"] == tid_of["nvme0"]
    assert read["ts"] == pytest.approx(4.1) and read["dur"] == pytest.approx(1.9)

    # every message: a slice on the sender, a flow from the sender to the receiver
    sends = [e for e in events if e["ph"] == "X" and e["cat"] == "msg"]
    assert len(sends) == 12
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == len(ends) == 12
    for send in sends:
        a = send["args"]
        assert send["tid"] == tid_of[a["src"]]
        assert {"corr", "size", "id", "kind"} <= a.keys()
    by_msg = {e["args"]["id"]: e for e in sends}
    assert by_msg[3]["args"] == {
        "id": 3,
        "corr": 7,
        "size": 40,
        "kind": "send",
        "src": "fat0",
        "dst": "cache",
        "reply_to": 0,
    }
    flow_of = {(s["name"], s["tid"]): ends[i] for i, s in starts.items()}
    # CacheRead ends inside the cache's handling span; IoDone inside the cache's CacheRead span
    cache_read_span = next(e for e in spans if e["name"] == "CacheRead")
    for name in ("CacheRead", "IoDone"):
        sender = "fat0" if name == "CacheRead" else "nvme0"
        f = flow_of[(name, tid_of[sender])]
        assert f["tid"] == tid_of["cache"]
        assert cache_read_span["ts"] <= f["ts"] <= cache_read_span["ts"] + cache_read_span["dur"]
    # the reply to proc:1 has no handling span there: a short recv slice takes the arrow
    f = flow_of[("CachePartDone", tid_of["vfs"])]
    assert f["tid"] == tid_of["proc:1"]
    recv = [e for e in events if e["ph"] == "X" and e["cat"] == "recv"]
    assert any(r["tid"] == f["tid"] and r["ts"] <= f["ts"] <= r["ts"] + r["dur"] for r in recv)
    # each flow start lies inside its sender slice
    for s in starts.values():
        assert any(x["tid"] == s["tid"] and x["ts"] <= s["ts"] <= x["ts"] + x["dur"] for x in sends)

    copies = [e for e in events if e["ph"] == "i"]
    assert [c["args"]["bytes"] for c in copies] == [4096, 512, 512]
    counters = [e for e in events if e["ph"] == "C"]
    assert counters[-1]["args"] == {"pio": 4096, "bounce": 1024}
    assert doc["otherData"]["t0_ns"] == T0


def test_perfetto_overlapping_spans_get_lanes() -> None:
    events = [
        span("cache", "CacheRead", 1, 0, 10_000),
        span("cache", "CacheRead", 2, 5_000, 15_000),  # overlaps, does not nest
        span("cache", "dma", 0, 6_000, 7_000),
        msg("fat0", "cache", "CacheRead", 2, 4_000, kind="send"),
        msg("cache", "vfs", "SectorsReady", 3, 9_500, kind="send"),
    ]
    doc = to_perfetto(lines_of(events))
    evs = check_trace_events(doc)
    check_nesting(evs)
    check_flow_binding(evs)
    names = thread_names(evs)
    assert sorted(n for n in names.values() if n.startswith("cache")) == ["cache", "cache #2"]
    # the flow of message 2 ends on the lane of the span that handles it
    f = next(e for e in evs if e["ph"] == "f" and e["name"] == "CacheRead")
    handler = next(
        e for e in evs if e["ph"] == "X" and e["args"].get("id") == 2 and e["cat"] == "span"
    )
    assert f["tid"] == handler["tid"]


# --------------------------------------------------------------------------- mermaid

MERMAID_LINE = re.compile(r"^    (p_\w+)(->>|-->>|--x)(p_\w+): (.+)$")
PARTICIPANT = re.compile(r"^    participant (p_[A-Za-z0-9_]+) as ([^#;\n]+)$")


def parse_diagram(text: str) -> tuple[dict[str, str], list[tuple[str, str, str, str]]]:
    lines = text.splitlines()
    assert lines[0].startswith("%% corr ")
    body = [line for line in lines if not line.startswith("%%")]
    assert body[0] == "sequenceDiagram"
    participants: dict[str, str] = {}
    arrows: list[tuple[str, str, str, str]] = []
    for line in body[1:]:
        if m := PARTICIPANT.match(line):
            assert not arrows, "participants are declared before messages"
            assert m.group(1) not in participants
            participants[m.group(1)] = m.group(2)
        elif m := MERMAID_LINE.match(line):
            assert m.group(1) in participants and m.group(3) in participants
            arrows.append(
                (participants[m.group(1)], m.group(2), participants[m.group(3)], m.group(4))
            )
        else:
            raise AssertionError(f"unexpected mermaid line {line!r}")
    return participants, arrows


def test_mermaid_read_flow(trace_file: Path) -> None:
    out = io.StringIO()
    render(trace_file, "mermaid", corr=7, out=out)
    text = out.getvalue()
    assert "%% corr 7" in text.splitlines()
    participants, arrows = parse_diagram(text)
    # first-appearance order, aliases without ':'
    assert list(participants.values()) == ["proc:1", "vfs", "fat0", "cache", "nvme0"]
    assert all(":" not in alias for alias in participants)
    expected_arrow = {"call": "->>", "send": "->>", "reply": "-->>"}
    assert [(a[0], a[1], a[2]) for a in arrows] == [
        (src, expected_arrow[kind], dst) for src, dst, _, kind in READ_FLOW
    ]
    assert [a[3].split()[0] for a in arrows] == [name for _, _, name, _ in READ_FLOW]
    assert arrows[0][3] == "CachePart (24 B)"
    assert arrows[6][3] == "SectorsReady (64 B)"


def test_mermaid_default_one_diagram_per_syscall_kind(trace_file: Path) -> None:
    diagrams = mermaid_diagrams(trace_file)
    # CachePart (first: corr 7, not 9) and Stat (corr 8)
    assert [d.splitlines()[0] for d in diagrams] == ["%% corr 7", "%% corr 8"]
    _, arrows = parse_diagram(diagrams[1])
    assert arrows == [
        ("proc:2", "->>", "vfs", "Stat (20 B)"),
        ("vfs", "--x", "proc:2", "error: ErrorReply (12 B)"),
    ]
    assert traceview.syscall_kinds(trace_file) == {7: "CachePart", 8: "Stat", 9: "CachePart"}
    _, hit = parse_diagram(mermaid_diagrams(trace_file, corr=9)[0])
    assert len(hit) == 2


def test_mermaid_aliases_are_unique_and_safe() -> None:
    events = [
        msg("proc:1", "proc_1", "Ping", 1, 0, kind="call"),
        msg("proc_1", "end", "Pong#;x", 2, 10, kind="send"),
    ]
    participants, arrows = parse_diagram(mermaid_diagrams(lines_of(events), corr=7)[0])
    assert list(participants.values()) == ["proc:1", "proc_1", "end"]
    assert len(set(participants)) == 3
    assert "#" not in arrows[1][3] and ";" not in arrows[1][3]


# --------------------------------------------------------------------------- summary


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) == 0
    assert percentile([5], 99) == 5
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([10, 20], 50) == 10 and percentile([10, 20], 90) == 20


def test_summary_numbers(trace_file: Path) -> None:
    s = summarize(trace_file)
    assert s.pairs[("proc:1", "vfs")] == 2
    assert s.pairs[("vfs", "proc:1")] == 2
    assert s.pairs[("fat0", "cache")] == 1
    assert s.pairs[("fat0", "vfs")] == 1
    assert s.pair_bytes[("proc:1", "vfs")] == 48
    assert sum(s.pairs.values()) == 12
    # CachePart: 8400 ns (miss, corr 7) and 2000 ns (hit, corr 9), computed by hand
    assert s.latency["CachePart"] == LatencyStats(
        count=2, p50=2_000, p90=8_400, p99=8_400, max=8_400
    )
    assert s.latency["MapRange"] == LatencyStats(1, 1_700, 1_700, 1_700, 1_700)
    assert s.latency["Read"].max == 1_800
    assert s.latency["Stat"].p50 == 800 and s.errors == {"Stat": 1}
    assert s.unanswered == {}
    assert set(s.latency) == {"CachePart", "MapRange", "Read", "Stat"}  # sends have none
    assert s.spans[("vfs", "CachePart")] == LatencyStats(2, 1_800, 2_600, 2_600, 2_600)
    assert s.spans[("nvme0", "dma")].p50 == 1_500
    assert s.copied == {"bounce": 1024, "pio": 4096}
    assert s.bytes_copied == 5120


@pytest.mark.parametrize("style", ["plain", "rich"])
def test_summary_text(trace_file: Path, style: str) -> None:
    out = io.StringIO()
    traceview.render_summary(trace_file, out, style=style)
    text = out.getvalue()
    for needle in ("proc:1", "nvme0", "CachePart", "8.400", "2.000", "1.700", "pio", "5120"):
        assert needle in text, needle
    row = next(line for line in text.splitlines() if "CachePart" in line and "8.400" in line)
    assert re.search(r"\b2\b", row)  # count column


def test_corr_filters_perfetto_and_summary(trace_file: Path) -> None:
    out = io.StringIO()
    render(trace_file, "perfetto", corr=8, out=out)
    events = check_trace_events(json.loads(out.getvalue()))
    assert set(thread_names(events).values()) == {"proc:2", "vfs"}
    assert sorted(e["name"] for e in events if e["ph"] == "s") == ["ErrorReply", "Stat"]
    s = summarize(parse(trace_file).only(8))
    assert s.pairs == {("proc:2", "vfs"): 1, ("vfs", "proc:2"): 1}
    assert set(s.latency) == {"Stat"} and s.bytes_copied == 0
    with pytest.raises(TraceViewError):
        render(trace_file, "summary", corr=12345, out=io.StringIO())


def test_summary_counts_unanswered_calls_and_skips() -> None:
    lines = [*lines_of([msg("proc:1", "vfs", "Open", 1, 0, kind="call")]), "garbage"]
    s = summarize(lines)
    assert s.unanswered == {"Open": 1} and s.latency == {}
    assert s.stats.not_json == 1
    out = io.StringIO()
    traceview.render_summary(lines, out, style="plain")
    text = out.getvalue()
    assert "Open" in text
    skipped = text.split("Input lines")[1].splitlines()[2].split()
    assert skipped == ["2", "1", "1", "0", "0", "1"]


# --------------------------------------------------------------------------- contract, properties


def test_parses_what_the_tracer_writes() -> None:
    from microkernel.trace import Tracer

    sink = io.StringIO()
    tracer = Tracer(sink)
    tracer.message("proc:1", "vfs", "CachePart", 1, 7, 24, "call", 0)
    tracer.span("vfs", "CachePart", 1, 7, 100, 200)
    tracer.copy("ide0", "pio", 512)
    trace = parse(sink.getvalue().splitlines())
    assert trace.stats.skipped == 0
    assert [m.msg for m in trace.messages] == ["CachePart"]
    assert trace.messages[0].kind == "call" and trace.messages[0].corr == 7
    assert trace.spans == [SpanEvent("vfs", "CachePart", 100, 200, id=1, corr=7)]
    assert trace.copies[0].bytes == 512 and trace.copies[0].reason == "pio"


SERVERS = ["proc:1", "vfs", "fat0", "cache", "nvme0"]


@st.composite
def random_trace(draw: st.DrawFn) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    ids = iter(range(1, 1_000))
    for _ in range(draw(st.integers(0, 12))):
        start = draw(st.integers(0, 5_000))
        dur = draw(st.integers(0, 3_000))
        events.append(
            span(draw(st.sampled_from(SERVERS)), "H", draw(st.integers(0, 20)), start, start + dur)
        )
    for _ in range(draw(st.integers(0, 15))):
        src, dst = draw(st.sampled_from(SERVERS)), draw(st.sampled_from(SERVERS))
        kind = draw(st.sampled_from(["send", "call", "reply", "error"]))
        events.append(msg(src, dst, "M", next(ids), draw(st.integers(0, 8_000)), kind=kind))
    return events


@settings(max_examples=150, deadline=None)
@given(random_trace())
def test_perfetto_valid_for_any_trace(events: list[dict[str, Any]]) -> None:
    doc = to_perfetto(lines_of(events))
    evs = check_trace_events(doc)
    check_nesting(evs)
    check_flow_binding(evs)
    n_msgs = sum(1 for e in events if e["event"] == "msg")
    assert sum(1 for e in evs if e["ph"] == "s") == n_msgs


def test_flow_lands_on_the_handling_span_not_an_auxiliary_one() -> None:
    events = [
        msg("cache", "nvme0", "Read", 5, 0, kind="call"),
        span("nvme0", "wait", 5, 100, 400),  # earlier, but auxiliary
        span("nvme0", "Read", 5, 300, 2_000),
    ]
    evs = check_trace_events(to_perfetto(lines_of(events)))
    check_flow_binding(evs)
    f = next(e for e in evs if e["ph"] == "f")
    read = next(e for e in evs if e["ph"] == "X" and e["cat"] == "span" and e["name"] == "Read")
    assert f["tid"] == read["tid"] and read["ts"] < f["ts"] < read["ts"] + read["dur"]
