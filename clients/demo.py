"""The demo workload of ``microkernel run``: several processes at once on one volume.

* a **writer** creates log files and appends records to them;
* **readers** read those files concurrently while they grow and check every record;
* a **font parser** makes thousands of tiny reads at scattered offsets (the
  pattern that makes a C library buffer): after the first misses they are all
  served from the mapping, without a message;
* a **streamer** writes a large file and streams it back through zero-copy views.

Every byte is verified with SHA-256. On the default (aligned) image the whole
run moves file data with ``bytes_copied == 0``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from clients.process import UserProcess
from microkernel.boot import System
from microkernel.stats import SCALAR_COUNTERS, Statistics

DEFAULT_IMAGE_SIZE = "272M"  # FAT32 with 4 KiB clusters needs about 260 MiB


@dataclass
class DemoReport:
    files_written: int = 0
    bytes_written: int = 0
    bytes_verified: int = 0
    tiny_reads: int = 0
    tiny_read_syscalls: int = 0
    errors: list[str] = field(default_factory=list)
    stats: Statistics | None = None


def _record(writer: int, n: int) -> bytes:
    body = f"writer {writer} record {n:06d} ".encode()
    return body + hashlib.sha256(body).hexdigest()[:16].encode() + b"\n"


async def _writer(proc: UserProcess, files: int, records: int, report: DemoReport) -> None:
    await proc.mkdir("/demo", exist_ok=True)
    for i in range(files):
        async with await proc.open(f"/demo/log-{i}.txt", "ab") as f:
            for n in range(records):
                report.bytes_written += await f.write(_record(i, n))
                if n % 64 == 63:
                    await f.flush()
        report.files_written += 1


async def _reader(proc: UserProcess, files: int, records: int, report: DemoReport) -> None:
    for i in range(files):
        path = f"/demo/log-{i}.txt"
        while not await proc.exists(path):
            await anyio.sleep(0.005)
        expected = b"".join(_record(i, n) for n in range(records))
        for _ in range(2000):  # bounded: the writer is appending concurrently
            data = await proc.read_file(path)
            if not expected.startswith(data):
                report.errors.append(f"{path}: read {len(data)} bytes that the writer never wrote")
                return
            if len(data) == len(expected):
                report.bytes_verified += len(data)
                break
            await anyio.sleep(0.002)
        else:
            report.errors.append(f"{path}: never reached its final size")


async def _font_parser(proc: UserProcess, reads: int, report: DemoReport) -> None:
    rng = random.Random(7)
    font = rng.randbytes(1 << 20)
    await proc.write_file("/demo/font.ttf", font)
    async with await proc.open("/demo/font.ttf", "rb") as f:
        before = proc.syscalls
        for _ in range(reads):
            offset, n = rng.randrange(len(font) - 16), rng.randrange(1, 17)
            f.seek(offset)
            if await f.read(n) != font[offset : offset + n]:
                report.errors.append(f"font.ttf: wrong bytes at {offset}+{n}")
                return
        report.tiny_reads += reads
        report.tiny_read_syscalls += proc.syscalls - before


async def _streamer(proc: UserProcess, size: int, report: DemoReport) -> None:
    rng = random.Random(11)
    chunk = rng.randbytes(1 << 20)
    digest = hashlib.sha256()
    async with await proc.open("/demo/stream.bin", "wb") as f:
        for i in range(size // len(chunk)):
            piece = bytes([i & 0xFF]) + chunk[1:]
            digest.update(piece)
            await f.write(piece)
        await f.fsync()
    check = hashlib.sha256()
    async with await proc.open("/demo/stream.bin", "rb") as f:
        for offset in range(0, f.size, 4 << 20):
            check.update(await f.view(offset, 4 << 20))
    if check.digest() != digest.digest():
        report.errors.append("stream.bin: streamed bytes differ from what was written")
    else:
        report.bytes_verified += size


async def run_demo(
    system: System,
    *,
    files: int = 4,
    records: int = 400,
    readers: int = 2,
    tiny_reads: int = 20000,
    stream_size: int = 32 << 20,
) -> DemoReport:
    """Run the workload on a booted system; returns what was done and verified."""
    report = DemoReport()
    start = system.statistics()
    writer = await system.spawn("writer")
    await writer.mkdir("/demo", exist_ok=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_writer, writer, files, records, report)
        for k in range(readers):
            tg.start_soon(_reader, await system.spawn(f"reader-{k}"), files, records, report)
        tg.start_soon(_font_parser, await system.spawn("font-parser"), tiny_reads, report)
        tg.start_soon(_streamer, await system.spawn("streamer"), stream_size, report)
    report.stats = system.statistics().delta(start)
    return report


def print_report(report: DemoReport, stats: Statistics, out: object = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout)  # type: ignore[arg-type]
    table = Table(title="microkernel run: demo workload")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("files written", report.files_written),
        ("bytes written", report.bytes_written),
        ("bytes verified (sha256)", report.bytes_verified),
        ("tiny reads", report.tiny_reads),
        ("syscalls for tiny reads (misses)", report.tiny_read_syscalls),
        ("errors", len(report.errors)),
    ]
    for name in SCALAR_COUNTERS:
        rows.append((name, getattr(stats, name)))
    for name, value in rows:
        table.add_row(name, f"{value:,}")
    console.print(table)
    for err in report.errors:
        console.print(f"[red]error:[/red] {err}")


DEMO_DIR = "/demo"


def demo_bytes(stream_size: int = 32 << 20, files: int = 4, records: int = 400) -> int:
    """Room the default workload needs: the stream, the font, the logs (generously)."""
    return stream_size + (1 << 20) + files * records * 64


async def cli_run(args: argparse.Namespace) -> int:
    """``microkernel run``: boot on the image (a fresh aligned FAT32 by default) and run the demo."""
    import microkernel
    from clients.commands import system_config

    if args.config is not None and args.image is None:
        async with microkernel.boot(config=args.config, trace=args.trace) as system:
            return await _run_and_report(system, args, "the configured volume")
    image = args.image
    tmp = None
    if image is None:
        tmp = tempfile.mkdtemp(prefix="microkernel-")
        image = str(Path(tmp) / "demo.img")
        microkernel.mkfs(image, size=DEFAULT_IMAGE_SIZE, fat=32, cluster_size=4096)
        where = image if args.keep else "a temporary directory (deleted at the end; --keep keeps it)"
        print(f"made a fresh FAT32 image ({DEFAULT_IMAGE_SIZE}, 4 KiB clusters) in {where}")
    try:
        async with microkernel.boot(
            config=system_config(args, image, read_only=args.read_only), trace=args.trace
        ) as system:
            return await _run_and_report(system, args, image)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


async def _run_and_report(system: System, args: argparse.Namespace, image: str) -> int:
    if system.missing:
        print(f"booted {[s.name for s in system.servers]}; missing: {system.missing}")
        return 1
    proc = await system.spawn("demo")
    volume = await proc.statfs("/")
    free = volume.free_clusters * volume.cluster_size
    if free < demo_bytes():
        _fail(
            f"{image}: the demo needs {demo_bytes() >> 20} MiB free, the volume has "
            f"{free / 2**20:.1f} MiB; nothing was written (omit --image for a fresh image)"
        )
        return 1
    created = not await proc.exists(DEMO_DIR)
    try:
        report = await run_demo(system)
    except (OSError, BaseExceptionGroup) as exc:
        await _clean_up(proc, created)
        _fail(f"{image}: the demo failed: {_first_error(exc)}; what it wrote was removed")
        return 1
    assert report.stats is not None
    print_report(report, report.stats)
    if args.stats:
        Path(args.stats).write_bytes(system.statistics().to_json())
    return 1 if report.errors else 0


def _fail(text: str) -> None:
    print(f"microkernel run: {text}", file=sys.stderr)


def _first_error(exc: BaseException) -> str:
    """One line for what went wrong first, from however deep a task group nested it."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({exc.strerror})"
    return str(exc) or type(exc).__name__


async def _clean_up(proc: UserProcess, created: bool) -> None:
    """Remove what the demo wrote: its directory if it made it, else only its own files."""
    names = [e.name for e in await proc.scandir(DEMO_DIR)] if await proc.exists(DEMO_DIR) else []
    ours = {"font.ttf", "stream.bin"} | {n for n in names if n.startswith("log-")}
    for name in names:
        if created or name in ours:
            with contextlib.suppress(OSError):
                await proc.unlink(f"{DEMO_DIR}/{name}")
    if created:
        with contextlib.suppress(OSError):
            await proc.rmdir(DEMO_DIR)
