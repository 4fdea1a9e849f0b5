"""The shell commands of DESIGN §7: ``ls cat stat cp mkdir rmdir rm mv`` on ``IMAGE::/path``.

Each command boots the whole system on its image and works through the file
library (``system.spawn``, ``proc.open`` ...), so every invocation exercises the
real message path and honours ``--trace``/``--stats``/``--driver``/``--memory``/
``--partition``. Operands on one image share one boot; a copy between two
different images boots them one after the other through a host temporary
directory, because one system serves one volume.

Messages and exit codes follow the Unix tools: a failing operand prints
``microkernel CMD: OPERAND: reason`` on stderr and the command carries on with
the next one, exiting 1; bad usage exits 2.

File data moves in 1 MiB chunks without copies of our own where the design
allows it: reads out of an image are zero-copy views of the process's mapping
handed straight to ``os.write``; writes into an image store into the mapping
from a page-aligned ``mmap`` buffer filled by ``preadv``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import mmap
import os
import posixpath
import shutil
import stat as stat_module
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from typing import Protocol

import anyio
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from clients import imagepath
from clients.file import File
from clients.imagepath import ImagePath
from clients.process import UserProcess
from microkernel.boot import boot
from microkernel.stats import Statistics
from servers.fs.protocol import FsInfo

PROG = "microkernel"
CHUNK = 1 << 20  # bytes per read/write system call of a copy
PROGRESS_MIN = 1 << 20  # files at least this big get a progress bar (on a terminal)

ATTR_READ_ONLY, ATTR_HIDDEN, ATTR_SYSTEM, ATTR_VOLUME, ATTR_DIR, ATTR_ARCHIVE = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
)
ATTR_LETTERS = (
    (ATTR_DIR, "d"),
    (ATTR_READ_ONLY, "r"),
    (ATTR_HIDDEN, "h"),
    (ATTR_SYSTEM, "s"),
    (ATTR_ARCHIVE, "a"),
)


class UsageError(Exception):
    """Bad operands: reported like argparse does, exit status 2."""


class Located(OSError):
    """An error pinned to the operand it concerns: a copy can fail on either side."""

    def __init__(self, where: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.where = where


# --------------------------------------------------------------------- invocation
class Invocation:
    """One command run: its options, its exit status and the systems it booted.

    Failures of single operands are reported here and the command goes on, like
    ``rm a b`` removes ``b`` when ``a`` is missing. The counters of every boot
    are summed for ``--stats``, and a second boot's trace is appended to the first.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.status = 0
        self.boots = 0
        self._stats: list[Statistics] = []

    def fail(self, where: object, exc: OSError | str, *, detail: bool = False) -> None:
        """Report a failed operand; ``detail`` adds the kernel's explanation (as ``-v`` does)."""
        self.status = 1
        if isinstance(exc, Located):
            where = exc.where
        print(
            f"{PROG} {self.args.command}: {where}: {_reason(exc, detail or self.args.verbose)}",
            file=sys.stderr,
        )

    @contextlib.asynccontextmanager
    async def session(self, image: str) -> AsyncIterator[UserProcess]:
        """Boot the system on ``image`` and give the command one user process in it."""
        trace = self._trace_path()
        try:
            async with self._boot(image, trace) as proc:
                yield proc
        except BaseExceptionGroup as group:  # a server task's failure, from boot's task group
            raise _sole(group) from None
        if trace is not None and trace != self.args.trace:
            _append_file(self.args.trace, trace)

    @contextlib.asynccontextmanager
    async def _boot(self, image: str, trace: str | None) -> AsyncIterator[UserProcess]:
        async with boot(
            image=image,
            driver=self.args.driver,
            memory=self.args.memory,
            trace=trace,
            partition=self.args.partition,
            log_level="info" if self.args.verbose else "warning",
        ) as system:
            proc = await system.spawn(f"{PROG}-{self.args.command}")
            try:
                yield proc
            finally:
                await proc.exit()
        # after the block: the counters include the writeback at shutdown
        self._stats.append(system.statistics())

    def _trace_path(self) -> str | None:
        self.boots += 1
        first: str | None = self.args.trace
        if first is None or self.boots == 1:
            return first
        return f"{first}.boot{self.boots}"

    def finish(self) -> int:
        if self.args.stats is not None and self._stats:
            with open(self.args.stats, "wb") as out:
                out.write(_sum_statistics(self._stats).to_json() + b"\n")
        return self.status


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error inside an exception group (cancellations aside), else the group."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, anyio.get_cancelled_exc_class()):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


def _reason(exc: OSError | str, verbose: bool) -> str:
    """``No such file or directory`` like the Unix tools; the kernel's detail with -v."""
    if isinstance(exc, str):
        return exc
    if not exc.errno:
        return str(exc)
    plain = os.strerror(exc.errno)
    return f"{plain} ({exc.strerror})" if verbose and exc.strerror not in (None, plain) else plain


def _append_file(dst: str, src: str) -> None:
    with open(src, "rb") as part, open(dst, "ab") as whole:
        shutil.copyfileobj(part, whole)
    os.unlink(src)


def _sum_statistics(runs: list[Statistics]) -> Statistics:
    """Counters of several boots added up (``frames_free`` is the last boot's level)."""
    values: dict[str, object] = {}
    for name in Statistics.__struct_fields__:
        items = [getattr(s, name) for s in runs]
        if name == "frames_free":
            values[name] = items[-1]
        elif isinstance(items[0], dict):
            total: dict[str, int] = {}
            for item in items:
                for key, n in item.items():
                    total[key] = total.get(key, 0) + n
            values[name] = total
        else:
            values[name] = sum(items)
    return Statistics(**values)  # type: ignore[arg-type]


async def _run(args: argparse.Namespace, body: Callable[[Invocation], Awaitable[None]]) -> int:
    """Run a command body; usage errors exit 2, a closed stdout (``| head``) ends quietly."""
    inv = Invocation(args)
    try:
        await body(inv)
    except UsageError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return 1
    return inv.finish()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not complain again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _image_operand(arg: str) -> ImagePath:
    loc = imagepath.parse(arg)
    if loc is None:
        raise UsageError(f"{arg}: not an image path (write IMAGE::/path)")
    return loc


async def _for_each(
    inv: Invocation,
    operands: list[str],
    action: Callable[[UserProcess, ImagePath], Awaitable[None]],
) -> None:
    """Apply ``action`` to every operand, booting once per run of operands on the same image."""
    locations = [_image_operand(arg) for arg in operands]
    for image, group in itertools.groupby(locations, key=lambda loc: loc.image):
        try:
            async with inv.session(image) as proc:
                for loc in group:
                    try:
                        await action(proc, loc)
                    except BrokenPipeError:
                        raise  # stdout went away: stop quietly (``_run``)
                    except OSError as exc:
                        inv.fail(loc, exc)
        except BrokenPipeError:
            raise
        except OSError as exc:  # the image could not be booted (or shut down)
            inv.fail(image, exc, detail=True)


# ---------------------------------------------------------------------- listing
def _attributes(info: FsInfo) -> str:
    """``d-h-a`` style: directory, read-only, hidden, system, archive."""
    return "".join(letter if info.attributes & bit else "-" for bit, letter in ATTR_LETTERS)


def _hidden(info: FsInfo) -> bool:
    return bool(info.attributes & (ATTR_HIDDEN | ATTR_SYSTEM)) or info.name.startswith(".")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _listing_table(entries: list[FsInfo], long: bool, terminal: bool) -> Table:
    table = Table(box=None, show_header=terminal and long, pad_edge=False, highlight=False)
    if long:
        table.add_column("attrs", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("modified", no_wrap=True)
    table.add_column("name", no_wrap=True)
    for e in entries:
        name = f"[bold blue]{escape(e.name)}[/]" if terminal and e.is_dir else escape(e.name)
        row = [_attributes(e), str(e.size), _when(e.mtime), name] if long else [name]
        table.add_row(*row)
    return table


def _print_table(table: Table) -> None:
    """Rich on a terminal; plain lines without trailing blanks in a pipe (for scripts)."""
    if sys.stdout.isatty():
        Console(highlight=False).print(table)
        return
    buf = StringIO()
    Console(file=buf, width=100_000, no_color=True, highlight=False).print(table)
    lines = (line.rstrip() for line in buf.getvalue().splitlines())
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


async def _ls(inv: Invocation) -> None:
    args = inv.args

    async def listing(proc: UserProcess, loc: ImagePath) -> None:
        info = await proc.stat(loc.path)
        entries = await proc.scandir(loc.path) if info.is_dir else [info]
        shown = [e for e in entries if not e.attributes & ATTR_VOLUME]
        if not args.all:
            shown = [e for e in shown if not _hidden(e)]
        shown.sort(key=lambda e: e.name.casefold())
        _print_table(_listing_table(shown, args.long, sys.stdout.isatty()))

    await _for_each(inv, [args.path], listing)


async def cli_ls(args: argparse.Namespace) -> int:
    """``ls [-l] [-a] IMG::/dir``: names, or a table of attributes, size, mtime and name."""
    return await _run(args, _ls)


# ------------------------------------------------------------------------- stat
def _stat_text(loc: ImagePath, info: FsInfo) -> str:
    kind = "directory" if info.is_dir else "regular file"
    return (
        f"  File: {loc}\n"
        f"  Size: {info.size:<12} Allocated: {info.alloc_size:<12} Type: {kind}\n"
        f" Attrs: {_attributes(info)} (0x{info.attributes:02x})  "
        f"First cluster: {info.native.get('first_cluster')}  "
        f"Short name: {info.native.get('short_name')}\n"
        f"Modify: {_when(info.mtime)}\n"
        f" Birth: {_when(info.ctime)}\n"
        f"Access: {time.strftime('%Y-%m-%d', time.localtime(info.atime)) if info.atime else '-'}\n"
    )


async def _stat(inv: Invocation) -> None:
    async def show(proc: UserProcess, loc: ImagePath) -> None:
        sys.stdout.write(_stat_text(loc, await proc.stat(loc.path)))
        sys.stdout.flush()

    await _for_each(inv, inv.args.paths, show)


async def cli_stat(args: argparse.Namespace) -> int:
    """``stat IMG::/path...``: the directory entry as the file system reports it."""
    return await _run(args, _stat)


# -------------------------------------------------------------------------- cat
def _write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until done (a pipe takes partial writes)."""
    while data:
        data = data[os.write(fd, data) :]


async def _cat(inv: Invocation) -> None:
    sys.stdout.flush()
    fd = sys.stdout.fileno()

    async def dump(proc: UserProcess, loc: ImagePath) -> None:
        async with await proc.open(loc.path, "rb") as f:
            for offset in range(0, f.size, CHUNK):
                _write_all(fd, await f.view(offset, CHUNK))

    await _for_each(inv, inv.args.paths, dump)


async def cli_cat(args: argparse.Namespace) -> int:
    """``cat IMG::/file...``: file bytes to stdout, zero-copy out of the mapping."""
    return await _run(args, _cat)


# ------------------------------------------------------------- directory changes
async def _mkdir(inv: Invocation) -> None:
    parents = bool(inv.args.parents)

    async def make(proc: UserProcess, loc: ImagePath) -> None:
        await proc.mkdir(loc.path, parents=parents, exist_ok=parents)

    await _for_each(inv, inv.args.paths, make)


async def cli_mkdir(args: argparse.Namespace) -> int:
    """``mkdir [-p] IMG::/dir...``."""
    return await _run(args, _mkdir)


async def _rmdir(inv: Invocation) -> None:
    async def remove(proc: UserProcess, loc: ImagePath) -> None:
        await proc.rmdir(loc.path)

    await _for_each(inv, inv.args.paths, remove)


async def cli_rmdir(args: argparse.Namespace) -> int:
    """``rmdir IMG::/dir...``: empty directories only."""
    return await _run(args, _rmdir)


async def _remove_tree(inv: Invocation, proc: UserProcess, loc: ImagePath) -> bool:
    """Depth first; a directory is removed only when everything in it was. True when gone."""
    info = await proc.stat(loc.path)
    if not info.is_dir:
        await proc.unlink(loc.path)
        return True
    if not inv.args.recursive:
        raise IsADirectoryError(errno.EISDIR, f"{loc}: is a directory (use -r)")
    done = True
    for entry in await proc.scandir(loc.path):
        child = loc.child(entry.name)
        try:
            done = await _remove_tree(inv, proc, child) and done
        except OSError as exc:
            inv.fail(child, exc)
            done = False
    if done:
        await proc.rmdir(loc.path)
    return done


async def _rm(inv: Invocation) -> None:
    async def remove(proc: UserProcess, loc: ImagePath) -> None:
        if loc.path == "/":
            inv.fail(loc, "refusing to remove the root directory")
            return
        try:
            await _remove_tree(inv, proc, loc)
        except FileNotFoundError:
            if not inv.args.force:
                raise

    await _for_each(inv, inv.args.paths, remove)


async def cli_rm(args: argparse.Namespace) -> int:
    """``rm [-r] [-f] IMG::/path...``: ``-f`` ignores missing operands."""
    return await _run(args, _rm)


async def _mv(inv: Invocation) -> None:
    src, dst = _image_operand(inv.args.src), _image_operand(inv.args.dst)
    if src.image != dst.image:
        raise UsageError("mv works inside one image; use cp and rm between images")

    async def move(proc: UserProcess, loc: ImagePath) -> None:
        target = dst
        with contextlib.suppress(FileNotFoundError):
            if (await proc.stat(dst.path)).is_dir and src.name:
                target = dst.child(src.name)
        await proc.rename(loc.path, target.path)

    await _for_each(inv, [inv.args.src], move)


async def cli_mv(args: argparse.Namespace) -> int:
    """``mv IMG::/a IMG::/b``: a rename in the file system (into ``b`` when it is a directory)."""
    return await _run(args, _mv)


# --------------------------------------------------------------------------- cp
class Reader(Protocol):
    size: int

    async def chunk(self, offset: int, n: int) -> memoryview: ...


class Writer(Protocol):
    async def write(self, data: memoryview) -> None: ...


class Side(Protocol):
    """One end of a copy: the host file system or a booted image."""

    def label(self, path: str) -> str: ...
    def join(self, path: str, name: str) -> str: ...
    async def is_dir(self, path: str) -> bool | None: ...  # None: does not exist
    async def names(self, path: str) -> list[str]: ...
    async def mkdir(self, path: str) -> None: ...
    def reader(self, path: str) -> contextlib.AbstractAsyncContextManager[Reader]: ...
    def writer(self, path: str) -> contextlib.AbstractAsyncContextManager[Writer]: ...


class _HostReader:
    """``preadv`` into one page-aligned anonymous mapping, reused for every chunk."""

    def __init__(self, fd: int, buffer: mmap.mmap) -> None:
        self.fd, self.buffer = fd, buffer
        self.size = os.fstat(fd).st_size

    async def chunk(self, offset: int, n: int) -> memoryview:
        got = os.preadv(self.fd, [self.buffer], offset)
        return memoryview(self.buffer)[: min(got, n)]


class _HostWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def write(self, data: memoryview) -> None:
        _write_all(self.fd, data)


class HostSide:
    """Plain paths: the machine's own files."""

    def label(self, path: str) -> str:
        return path

    def join(self, path: str, name: str) -> str:
        return os.path.join(path, name)

    async def is_dir(self, path: str) -> bool | None:
        try:
            return stat_module.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            return None

    async def names(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    async def mkdir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @contextlib.asynccontextmanager
    async def reader(self, path: str) -> AsyncIterator[Reader]:
        fd = os.open(path, os.O_RDONLY)
        buffer = mmap.mmap(-1, CHUNK)
        try:
            yield _HostReader(fd, buffer)
        finally:
            os.close(fd)
            # a traceback may still hold a view of the buffer: then the GC unmaps it later
            with contextlib.suppress(BufferError):
                buffer.close()

    @contextlib.asynccontextmanager
    async def writer(self, path: str) -> AsyncIterator[Writer]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            yield _HostWriter(fd)
        finally:
            os.close(fd)


class _ImageReader:
    def __init__(self, f: File) -> None:
        self.f = f
        self.size = f.size

    async def chunk(self, offset: int, n: int) -> memoryview:
        return await self.f.view(offset, n)


class _ImageWriter:
    def __init__(self, f: File) -> None:
        self.f = f

    async def write(self, data: memoryview) -> None:
        await self.f.write(data)


@dataclass
class ImageSide:
    """Paths inside the volume a process of a booted system sees."""

    image: str
    proc: UserProcess

    def label(self, path: str) -> str:
        return str(ImagePath(self.image, path))

    def join(self, path: str, name: str) -> str:
        return posixpath.join(path, name)

    async def is_dir(self, path: str) -> bool | None:
        try:
            return (await self.proc.stat(path)).is_dir
        except FileNotFoundError:
            return None

    async def names(self, path: str) -> list[str]:
        entries = await self.proc.scandir(path)
        return sorted(e.name for e in entries if not e.attributes & ATTR_VOLUME)

    async def mkdir(self, path: str) -> None:
        await self.proc.mkdir(path, exist_ok=True)

    @contextlib.asynccontextmanager
    async def reader(self, path: str) -> AsyncIterator[Reader]:
        async with await self.proc.open(path, "rb") as f:
            yield _ImageReader(f)

    @contextlib.asynccontextmanager
    async def writer(self, path: str) -> AsyncIterator[Writer]:
        """Grown chunk by chunk (one ``SetSize`` each), not sized up front: the cache
        must supply a whole extension at once, so a file bigger than it would not fit."""
        async with await self.proc.open(path, "wb") as f:
            yield _ImageWriter(f)


class _Bars:
    """rich progress bars on stderr for big files, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        if sys.stderr.isatty():
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    @contextlib.contextmanager
    def track(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.progress is None or total < PROGRESS_MIN:
            yield lambda n: None
            return
        progress = self.progress
        task = progress.add_task(label, total=total)
        try:
            yield lambda n: progress.advance(task, n)
        finally:
            progress.remove_task(task)

    def __enter__(self) -> _Bars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


@dataclass
class Copier:
    """Copies between two sides, reporting each failing file and carrying on."""

    inv: Invocation
    src: Side
    dst: Side
    bars: _Bars

    async def file(self, src: str, dst: str) -> None:
        """One file; an error names the side it happened on, like ``cp: cannot create ...``."""
        async with self.src.reader(src) as reader:
            try:
                async with self.dst.writer(dst) as writer:
                    await self._pump(reader, writer, self.src.label(src))
            except Located:
                raise
            except OSError as exc:
                raise Located(self.dst.label(dst), exc) from exc

    async def _pump(self, reader: Reader, writer: Writer, label: str) -> None:
        with self.bars.track(label, reader.size) as advance:
            for offset in range(0, reader.size, CHUNK):
                try:
                    data = await reader.chunk(offset, CHUNK)
                except OSError as exc:
                    raise Located(label, exc) from exc
                with data:  # released at once, so the host reader's buffer can be reused
                    await writer.write(data)
                    advance(len(data))

    async def tree(self, src: str, dst: str) -> None:
        if not await self.src.is_dir(src):
            await self.file(src, dst)
            return
        await self.dst.mkdir(dst)
        for name in await self.src.names(src):
            s, d = self.src.join(src, name), self.dst.join(dst, name)
            try:
                await self.tree(s, d)
            except OSError as exc:
                self.inv.fail(self.src.label(s), exc)

    async def top(self, src: str, dst: str) -> None:
        """``cp`` rules for the operands: into an existing directory, ``-r`` for directories."""
        kind = await self.src.is_dir(src)
        if kind is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.src.label(src)}: not found")
        if kind and not self.inv.args.recursive:
            self.inv.fail(self.src.label(src), "is a directory (not copied; use -r)")
            return
        name = posixpath.basename(src.rstrip("/"))
        if name and await self.dst.is_dir(dst):
            dst = self.dst.join(dst, name)
        if kind and self.src is self.dst and (dst + "/").startswith(src.rstrip("/") + "/"):
            self.inv.fail(self.src.label(src), "cannot copy a directory into itself")
            return
        await (self.tree(src, dst) if kind else self.file(src, dst))


async def _copy(inv: Invocation, src: Side, s: str, dst: Side, d: str) -> None:
    with _Bars() as bars:
        try:
            await Copier(inv, src, dst, bars).top(s, d)
        except OSError as exc:
            inv.fail(src.label(s), exc)


async def _cp(inv: Invocation) -> None:
    src, dst = imagepath.parse(inv.args.src), imagepath.parse(inv.args.dst)
    host = HostSide()
    if src is None and dst is None:
        raise UsageError("neither operand is an image path (write IMAGE::/path); use cp(1)")
    if src is None:
        assert dst is not None
        await _with_image(
            inv, dst.image, lambda side: _copy(inv, host, inv.args.src, side, dst.path)
        )
    elif dst is None:
        await _with_image(
            inv, src.image, lambda side: _copy(inv, side, src.path, host, inv.args.dst)
        )
    elif src.image == dst.image:
        await _with_image(inv, src.image, lambda side: _copy(inv, side, src.path, side, dst.path))
    else:
        await _cp_between_images(inv, src, dst)


async def _with_image(
    inv: Invocation, image: str, body: Callable[[ImageSide], Awaitable[None]]
) -> None:
    try:
        async with inv.session(image) as proc:
            await body(ImageSide(image, proc))
    except OSError as exc:
        inv.fail(image, exc, detail=True)


async def _cp_between_images(inv: Invocation, src: ImagePath, dst: ImagePath) -> None:
    """Two boots in turn: the source image into a host staging directory, then out of it.

    The staged copy keeps the source name, so the second step follows the same
    ``cp`` rules (into an existing directory or onto a new name) as a direct copy.
    """
    host = HostSide()
    with tempfile.TemporaryDirectory(prefix="microkernel-cp-") as staging:
        name = src.name or "root"
        staged = os.path.join(staging, name)
        await _with_image(inv, src.image, lambda side: _copy(inv, side, src.path, host, staged))
        if inv.status or not os.path.exists(staged):
            return
        await _with_image(inv, dst.image, lambda side: _copy(inv, host, staged, side, dst.path))


async def cli_cp(args: argparse.Namespace) -> int:
    """``cp [-r] SRC DST`` with either side (or both) an ``IMG::/path``."""
    return await _run(args, _cp)


__all__ = [
    "cli_cat",
    "cli_cp",
    "cli_ls",
    "cli_mkdir",
    "cli_mv",
    "cli_rm",
    "cli_rmdir",
    "cli_stat",
]
