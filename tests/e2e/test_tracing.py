"""Tracing one read() through every server, and the viewers on a real trace."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import microkernel
from microkernel.traceview import mermaid_diagrams, render
from tests.e2e.conftest import ImageFactory

pytestmark = pytest.mark.anyio


async def test_one_read_is_traced_across_every_server(
    make_image: ImageFactory, tmp_path: Path
) -> None:
    # Bigger than what an open maps at once (core.SMALL_FILE_PAGES): the first read misses.
    image = make_image({"/notes.txt": b"traced bytes\n" * 8000})
    trace = tmp_path / "trace.jsonl"
    async with microkernel.boot(image=image, memory="64M", trace=trace) as system:
        proc = await system.spawn("reader")
        async with await proc.open("/notes.txt", "rb") as f:
            assert (await f.read()).startswith(b"traced bytes")
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    msgs = [e for e in events if e["event"] == "msg"]
    (part,) = [m for m in msgs if m["msg"] == "CachePart"]
    flow = [(m["src"], m["dst"], m["msg"]) for m in msgs if m["corr"] == part["corr"]]
    # docs/architecture.md §4: the cache answers the kernel file driver directly, not the file system.
    assert sorted(flow) == sorted(
        [
            ("proc:1", "vfs", "CachePart"),
            ("vfs", "fat0", "MapRange"),
            ("fat0", "cache", "CacheRead"),
            ("fat0", "vfs", "Mapped"),
            ("cache", "nvme0", "Read"),
            ("nvme0", "cache", "IoDone"),
            ("cache", "vfs", "SectorsReady"),
            ("vfs", "proc:1", "PartReady"),
        ]
    )
    assert flow[0] == ("proc:1", "vfs", "CachePart")
    assert flow[-1] == ("vfs", "proc:1", "PartReady")
    spans = {
        (e["server"], e["name"])
        for e in events
        if e["event"] == "span" and e["corr"] == part["corr"]
    }
    assert {
        ("vfs", "CachePart"),
        ("fat0", "MapRange"),
        ("cache", "CacheRead"),
        ("nvme0", "Read"),
    } <= spans
    (diagram,) = mermaid_diagrams(str(trace), corr=part["corr"])
    lines = [line.strip() for line in diagram.splitlines() if "->>" in line or "-->>" in line]
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == [name for _, _, name in flow]
    out = io.StringIO()
    render(str(trace), "perfetto", out=out)
    assert json.loads(out.getvalue())["traceEvents"]


async def test_tracing_off_writes_nothing(make_image: ImageFactory, tmp_path: Path) -> None:
    image = make_image({"/a.txt": b"a"})
    async with microkernel.boot(image=image, memory="64M") as system:
        assert not system.tracer.enabled
        proc = await system.spawn("p")
        assert await proc.read_file("/a.txt") == b"a"
    assert list(tmp_path.glob("*.jsonl")) == []


async def test_dma_spans_and_counted_copies_appear_in_the_trace(
    make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image({"/pio.bin": b"p" * 50_000})
    trace = tmp_path / "pio.jsonl"
    async with microkernel.boot(image=image, memory="64M", driver="ide-pio", trace=trace) as system:
        proc = await system.spawn("reader")
        assert await proc.read_file("/pio.bin") == b"p" * 50_000
    copied = system.statistics().copies_by_reason["pio"]  # after shutdown: every copy
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert any(e["event"] == "span" and e["name"] == "dma" and e["server"] == "ide0" for e in events)
    assert sum(e["bytes"] for e in events if e["event"] == "copy" and e["reason"] == "pio") == copied
    out = io.StringIO()
    render(str(trace), "summary", out=out)
    assert "pio" in out.getvalue()
