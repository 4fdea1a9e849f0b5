"""The shell commands: ``ls cat stat cp mkdir rmdir rm mv du df`` on ``IMAGE::/path``.

Each command boots the whole system on its image and works through the file
library (``system.spawn``, ``proc.open`` ...), so every invocation exercises the
real message path and honours ``--trace``/``--stats``/``--driver``/``--memory``/
``--partition``/``--read-only``/``--config``. Operands on one image share one
boot; a copy between two different images boots them one after the other
through a host temporary directory, because one system serves one volume.
Commands that only read (``ls cat stat du df``, ``cp`` out of an image) boot
the image read-only: it is opened ``O_RDONLY`` under a shared lock, so an
image the user may only read works, and several readers may run at once.

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
import fnmatch
import itertools
import mmap
import os
import posixpath
import shutil
import stat as stat_module
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec

from clients import imagepath
from clients.file import File
from clients.imagepath import ImagePath
from clients.process import UserProcess
from microkernel.boot import boot
from microkernel.config import DeviceConfig, SystemConfig, load_config
from microkernel.imagelock import ImageInUse
from microkernel.stats import Statistics
from servers.fat.protocol import FAT_TYPE, FIRST_CLUSTER
from servers.fs.protocol import FsInfo

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

PROG = "microkernel"
CHUNK = 1 << 20  # bytes per read/write system call of a copy
PROGRESS_MIN = 1 << 20  # files at least this big get a progress bar (on a terminal)
MAX_MATCHES = 100_000  # a wildcard expands to at most this many paths
MAX_DEPTH = 256  # recursion bound for -r/-R/du on a damaged volume

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


class Explained(OSError):
    """An error whose text is the whole explanation (printed as is, not as strerror(errno))."""


class NoMatch(Explained, FileNotFoundError):
    """A wildcard matched nothing: ENOENT, so ``rm -f`` may ignore it like a missing file."""

    def __init__(self) -> None:
        super().__init__(errno.ENOENT, "no file matches the pattern")


class Located(OSError):
    """An error pinned to the operand it concerns: a copy can fail on either side."""

    def __init__(self, where: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.where = where
        self.cause = exc


def _cluster(info: FsInfo) -> int:
    """A directory's first cluster: what tells a loop in a damaged volume's tree apart."""
    return int(info.native.get(FIRST_CLUSTER, 0))


def human(n: int) -> str:
    """``4.0K``, ``1.2M`` like ``du -h``; whole bytes below 1 KiB."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _printable(text: str) -> str:
    """A host name that is not UTF-8 shown with ``\\xff`` escapes, never a crash."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
            where, exc = exc.where, exc.cause
        reason = _reason(exc, detail or self.args.verbose)
        print(f"{PROG} {self.args.command}: {_printable(str(where))}: {reason}", file=sys.stderr)

    def boot_failed(self, image: str, exc: OSError) -> None:
        """The image could not be booted: name the file that failed and say what to do."""
        where = exc.filename if isinstance(exc.filename, str) and exc.filename else image
        if isinstance(exc, ImageInUse | FileNotFoundError | PermissionError):
            self.fail(where, exc)
            return
        hint = _partition_hint(image, self.args.partition)
        self.fail(
            where, Explained(exc.errno, _reason(exc, True) + hint) if hint else exc, detail=True
        )

    @contextlib.asynccontextmanager
    async def session(self, image: str, *, writing: bool) -> AsyncIterator[UserProcess]:
        """Boot the system on ``image`` and give the command one user process in it.

        A command that only reads boots the image read-only (``O_RDONLY``,
        shared lock); ``--read-only`` makes every command do so.
        """
        trace = self._trace_path()
        read_only = self.args.read_only or not writing
        try:
            async with self._boot(image, trace, read_only) as proc:
                yield proc
        except BaseExceptionGroup as group:  # a server task's failure, from boot's task group
            raise _sole(group) from None
        if trace is not None and trace != self.args.trace:
            _append_file(self.args.trace, trace)

    @contextlib.asynccontextmanager
    async def _boot(
        self, image: str, trace: str | None, read_only: bool
    ) -> AsyncIterator[UserProcess]:
        async with boot(
            config=system_config(self.args, image, read_only=read_only),
            trace=trace,
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


def system_config(args: argparse.Namespace, image: str, *, read_only: bool) -> SystemConfig:
    """The boot configuration for one image operand.

    Without ``--config``: one device with ``--driver`` and ``--memory``. With
    it: the file's memory, cache and trace settings, and its first device's
    driver settings (sector sizes, partition, options, read_only) applied to
    the operand's image. A ramdisk a command writes to writes back to the
    image on a clean shutdown unless ``--driver-option write_back=false``.
    """
    base = load_config(args.config) if args.config else SystemConfig(memory=args.memory)
    template = base.devices[0] if base.devices else DeviceConfig(image=image, driver=args.driver)
    options = {**template.options, **_driver_options(args.driver_options)}
    read_only = read_only or template.read_only
    if not read_only and _is_ramdisk(template.driver):
        options.setdefault("write_back", True)
    device = msgspec.structs.replace(
        template,
        image=image,
        partition=args.partition or template.partition,
        read_only=read_only,
        options=options,
    )
    return msgspec.structs.replace(base, devices=[device])


def _driver_options(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; true/false/none and integers are converted."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--driver-option {item!r}: write KEY=VALUE")
        words: dict[str, Any] = {"true": True, "false": False, "none": None}
        value: Any = words.get(text.lower(), text)
        with contextlib.suppress(ValueError):
            value = int(text, 0)
        options[key] = value
    return options


def _is_ramdisk(driver: str) -> bool:
    from drivers.ramdisk import RamDisk
    from drivers.registry import load_driver

    try:
        return issubclass(load_driver(driver), RamDisk)
    except Exception:  # an unknown driver is reported by boot, with its own message
        return False


def _partition_hint(image: str, partition: int) -> str:
    """For a volume that would not mount: the MBR partitions there are, and what to pass."""
    from drivers.mbr import parse_mbr

    try:
        with open(image, "rb") as f:
            sector = f.read(512)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return ""
    parts = [p for p in parse_mbr(sector, size // 512) if p.index != partition]
    if not parts:
        return ""
    listed = ", ".join(
        f"{p.index} (type 0x{p.type:02x}, {human(p.sectors * 512)} at sector {p.start})"
        for p in parts
    )
    return f"; the image has MBR partitions {listed}: pass --partition {parts[0].index}"


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
    """``No such file or directory`` like the Unix tools; the kernel's detail with -v.

    An invalid name (EINVAL) always gets the detail: "Invalid argument" alone
    does not tell the user that FAT forbids ``:`` in names.
    """
    if isinstance(exc, str):
        return exc
    if isinstance(exc, Explained | ImageInUse):
        return str(exc.strerror)
    if not exc.errno:
        return str(exc)
    plain = os.strerror(exc.errno)
    verbose = verbose or exc.errno == errno.EINVAL
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


async def expand(proc: UserProcess, loc: ImagePath) -> list[ImagePath]:
    """Shell-style wildcards in ``loc`` matched against the volume, like mtools does.

    Matching is case-insensitive (FAT names are); volume labels never match;
    results are sorted. A path without wildcards, or one that exists as
    written (FAT long names may contain ``[``), is returned unchanged.
    """
    if not loc.has_wildcards:
        return [loc]
    with contextlib.suppress(OSError):
        await proc.stat(loc.path)
        return [loc]
    found = ["/"]
    for part in (p for p in loc.path.split("/") if p):
        if not any(ch in part for ch in imagepath.WILDCARDS):
            found = [posixpath.join(d, part) for d in found]
            continue
        found = await _matches(proc, found, part)
    if not found:
        raise NoMatch()
    return [loc.at(path) for path in found]


async def _matches(proc: UserProcess, dirs: list[str], pattern: str) -> list[str]:
    folded = pattern.casefold()
    out: list[str] = []
    for d in dirs:
        try:
            entries = await proc.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        names = sorted(
            e.name
            for e in entries
            if not e.attributes & ATTR_VOLUME and fnmatch.fnmatchcase(e.name.casefold(), folded)
        )
        out.extend(posixpath.join(d, name) for name in names)
        if len(out) > MAX_MATCHES:
            raise Explained(errno.E2BIG, f"the pattern matches more than {MAX_MATCHES} paths")
    return out


async def _for_each(
    inv: Invocation,
    operands: list[str],
    action: Callable[[UserProcess, ImagePath], Awaitable[None]],
    *,
    writing: bool,
    wildcards: bool = True,
) -> None:
    """Apply ``action`` to every operand, booting once per run of operands on the same image."""
    locations = [_image_operand(arg) for arg in operands]
    for image, group in itertools.groupby(locations, key=lambda loc: loc.image):
        try:
            async with inv.session(image, writing=writing) as proc:
                for operand in group:
                    try:
                        for loc in await expand(proc, operand) if wildcards else [operand]:
                            await _apply(inv, action, proc, loc)
                    except OSError as exc:
                        inv.fail(operand, exc)
        except BrokenPipeError:
            raise
        except OSError as exc:  # the image could not be booted (or shut down)
            inv.boot_failed(image, exc)


async def _apply(
    inv: Invocation,
    action: Callable[[UserProcess, ImagePath], Awaitable[None]],
    proc: UserProcess,
    loc: ImagePath,
) -> None:
    try:
        await action(proc, loc)
    except BrokenPipeError:
        raise  # stdout went away: stop quietly (``_run``)
    except OSError as exc:
        inv.fail(loc, exc)


# ---------------------------------------------------------------------- listing
def _attributes(info: FsInfo) -> str:
    """``d-h-a`` style: directory, read-only, hidden, system, archive."""
    return "".join(letter if info.attributes & bit else "-" for bit, letter in ATTR_LETTERS)


def _hidden(info: FsInfo) -> bool:
    return bool(info.attributes & (ATTR_HIDDEN | ATTR_SYSTEM)) or info.name.startswith(".")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _rows(entries: list[FsInfo], long: bool) -> list[list[str]]:
    if not long:
        return [[e.name] for e in entries]
    return [[_attributes(e), str(e.size), _when(e.mtime), e.name] for e in entries]


def _print_rows(rows: list[list[str]], entries: list[FsInfo], long: bool) -> None:
    """Rich on a terminal; plain aligned lines without trailing blanks in a pipe (for scripts)."""
    if sys.stdout.isatty():
        from rich.console import Console

        Console(highlight=False).print(_rich_table(rows, entries, long))
        return
    _print_plain(rows, right=(1,) if long else ())


def _print_plain(rows: list[list[str]], *, right: tuple[int, ...] = ()) -> None:
    widths = [max(len(c) for c in col) for col in zip(*rows, strict=True)] if rows else []
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(" ".join(cells).rstrip() + "\n")
    sys.stdout.write("".join(lines))
    sys.stdout.flush()


def _rich_table(rows: list[list[str]], entries: list[FsInfo], long: bool) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, show_header=long, pad_edge=False, highlight=False)
    if long:
        table.add_column("attrs", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("modified", no_wrap=True)
    table.add_column("name", no_wrap=True)
    for row, e in zip(rows, entries, strict=True):
        name = f"[bold blue]{escape(e.name)}[/]" if e.is_dir else escape(e.name)
        table.add_row(*row[:-1], name)
    return table


def _shown(entries: list[FsInfo], show_all: bool) -> list[FsInfo]:
    shown = [e for e in entries if not e.attributes & ATTR_VOLUME]
    if not show_all:
        shown = [e for e in shown if not _hidden(e)]
    return sorted(shown, key=lambda e: e.name.casefold())


async def _ls(inv: Invocation) -> None:
    args = inv.args
    wildcards = any(ch in p for p in args.paths for ch in imagepath.WILDCARDS)
    headers = len(args.paths) > 1 or args.recursive or wildcards
    first = [True]

    async def show_dir(proc: UserProcess, loc: ImagePath, seen: set[int], depth: int) -> None:
        entries = _shown(await proc.scandir(loc.path), args.all)
        if headers:
            sys.stdout.write(("" if first[0] else "\n") + f"{loc}:\n")
        first[0] = False
        _print_rows(_rows(entries, args.long), entries, args.long)
        if not args.recursive:
            return
        for e in entries:
            if not e.is_dir or _cluster(e) in seen:
                continue
            if depth >= MAX_DEPTH:
                inv.fail(loc.child(e.name), "directories nested too deep (not listed)")
                continue
            seen.add(_cluster(e))
            try:
                await show_dir(proc, loc.child(e.name), seen, depth + 1)
            except OSError as exc:
                inv.fail(loc.child(e.name), exc)

    async def listing(proc: UserProcess, loc: ImagePath) -> None:
        info = await proc.stat(loc.path)
        if info.is_dir:
            await show_dir(proc, loc, {_cluster(info)}, 0)
        else:
            first[0] = False
            _print_rows(_rows([info], args.long), [info], args.long)

    await _for_each(inv, args.paths, listing, writing=False)


async def cli_ls(args: argparse.Namespace) -> int:
    """``ls [-l] [-a] [-R] IMG::/dir...``: names, or attributes, size, mtime and name."""
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

    await _for_each(inv, inv.args.paths, show, writing=False)


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

    await _for_each(inv, inv.args.paths, dump, writing=False)


async def cli_cat(args: argparse.Namespace) -> int:
    """``cat IMG::/file...``: file bytes to stdout, zero-copy out of the mapping."""
    return await _run(args, _cat)


# --------------------------------------------------------------------- du and df
async def _usage(
    inv: Invocation, proc: UserProcess, loc: ImagePath, info: FsInfo, seen: set[int], depth: int
) -> int:
    """Bytes allocated to ``loc`` and everything under it; prints lines as ``du`` does."""
    total = info.alloc_size
    if info.is_dir:
        for e in await proc.scandir(loc.path):
            if e.attributes & ATTR_VOLUME or (e.is_dir and _cluster(e) in seen):
                continue
            if depth >= MAX_DEPTH:
                inv.fail(loc.child(e.name), "directories nested too deep (not counted)")
                continue
            if e.is_dir:
                seen.add(_cluster(e))
            try:
                total += await _usage(inv, proc, loc.child(e.name), e, seen, depth + 1)
            except OSError as exc:
                inv.fail(loc.child(e.name), exc)
    if depth == 0 or (not inv.args.summarize and (info.is_dir or inv.args.all)):
        size = human(total) if inv.args.human else str(-(-total // 1024))
        sys.stdout.write(f"{size}\t{loc}\n")
    return total


async def _du(inv: Invocation) -> None:
    async def usage(proc: UserProcess, loc: ImagePath) -> None:
        info = await proc.stat(loc.path)
        await _usage(inv, proc, loc, info, {_cluster(info)}, 0)
        sys.stdout.flush()

    await _for_each(inv, inv.args.paths, usage, writing=False)


async def cli_du(args: argparse.Namespace) -> int:
    """``du [-s] [-a] [-h] IMG::/path...``: allocated space in KiB (clusters, like du)."""
    return await _run(args, _du)


async def _df(inv: Invocation) -> None:
    human_sizes = inv.args.human
    unit = "Size" if human_sizes else "1K-blocks"
    rows = [["Image", "Type", unit, "Used", "Free", "Use%", "Cluster", "Label"]]

    def size(n: int) -> str:
        return human(n) if human_sizes else str(n // 1024)

    for arg in inv.args.images:
        loc = imagepath.parse(arg) or ImagePath(arg, "/")
        try:
            async with inv.session(loc.image, writing=False) as proc:
                v = await proc.statfs("/")
        except OSError as exc:
            inv.boot_failed(loc.image, exc)
            continue
        total = v.total_clusters * v.cluster_size
        free = v.free_clusters * v.cluster_size
        used = total - free
        percent = f"{-(-100 * used // total)}%" if total else "-"
        rows.append(
            [loc.image, f"FAT{v.native.get(FAT_TYPE, '?')}", size(total), size(used), size(free), percent,
             str(v.cluster_size), v.label.strip() or "-"]
        )  # fmt: skip
    if len(rows) > 1:
        _print_plain(rows, right=(2, 3, 4, 5, 6))


async def cli_df(args: argparse.Namespace) -> int:
    """``df [-h] IMG...``: size, used and free space, FAT type, cluster size, label."""
    return await _run(args, _df)


# ------------------------------------------------------------- directory changes
async def _mkdir(inv: Invocation) -> None:
    parents = bool(inv.args.parents)

    async def make(proc: UserProcess, loc: ImagePath) -> None:
        await proc.mkdir(loc.path, parents=parents, exist_ok=parents)

    await _for_each(inv, inv.args.paths, make, writing=True, wildcards=False)


async def cli_mkdir(args: argparse.Namespace) -> int:
    """``mkdir [-p] IMG::/dir...``."""
    return await _run(args, _mkdir)


async def _rmdir(inv: Invocation) -> None:
    async def remove(proc: UserProcess, loc: ImagePath) -> None:
        await proc.rmdir(loc.path)

    await _for_each(inv, inv.args.paths, remove, writing=True)


async def cli_rmdir(args: argparse.Namespace) -> int:
    """``rmdir IMG::/dir...``: empty directories only."""
    return await _run(args, _rmdir)


async def _remove_tree(inv: Invocation, proc: UserProcess, loc: ImagePath, depth: int = 0) -> bool:
    """Depth first; a directory is removed only when everything in it was. True when gone."""
    info = await proc.stat(loc.path)
    if not info.is_dir:
        await proc.unlink(loc.path)
        return True
    if not inv.args.recursive:
        raise Explained(errno.EISDIR, "Is a directory (not removed; use -r)")
    if depth >= MAX_DEPTH:
        raise Explained(errno.ELOOP, "directories nested too deep (not removed)")
    done = True
    for entry in await proc.scandir(loc.path):
        if entry.attributes & ATTR_VOLUME:
            continue
        child = loc.child(entry.name)
        try:
            done = await _remove_tree(inv, proc, child, depth + 1) and done
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
        await _remove_tree(inv, proc, loc)

    async def remove_quietly(proc: UserProcess, loc: ImagePath) -> None:
        with contextlib.suppress(FileNotFoundError):
            await remove(proc, loc)

    if not inv.args.force:
        await _for_each(inv, inv.args.paths, remove, writing=True)
        return

    async def forced(proc: UserProcess, loc: ImagePath) -> None:  # -f: no match is no error
        try:
            matches = await expand(proc, loc)
        except FileNotFoundError:
            return
        for match in matches:
            await _apply(inv, remove_quietly, proc, match)

    await _for_each(inv, inv.args.paths, forced, writing=True, wildcards=False)


async def cli_rm(args: argparse.Namespace) -> int:
    """``rm [-r] [-f] IMG::/path...``: ``-f`` ignores missing operands."""
    return await _run(args, _rm)


async def _mv(inv: Invocation) -> None:
    src, dst = _image_operand(inv.args.src), _image_operand(inv.args.dst)
    if src.image != dst.image:
        raise UsageError("mv works inside one image; use cp and rm between images")

    async def move(proc: UserProcess, loc: ImagePath) -> None:
        target = dst
        try:
            if (await proc.stat(dst.path)).is_dir and src.name:
                target = dst.child(src.name)
        except FileNotFoundError:
            if dst.trailing_slash:
                raise Located(
                    str(dst), FileNotFoundError(errno.ENOENT, "no such directory")
                ) from None
        await proc.rename(loc.path, target.path)

    await _for_each(inv, [inv.args.src], move, writing=True, wildcards=False)


async def cli_mv(args: argparse.Namespace) -> int:
    """``mv IMG::/a IMG::/b``: a rename in the file system (into ``b`` when it is a directory)."""
    return await _run(args, _mv)


# --------------------------------------------------------------------------- cp
class Reader(Protocol):
    size: int
    mtime: float

    async def chunk(self, offset: int, n: int) -> memoryview: ...


class Writer(Protocol):
    async def write(self, data: memoryview) -> None: ...
    async def set_mtime(self, mtime: float) -> None: ...


class Side(Protocol):
    """One end of a copy: the host file system or a booted image."""

    def label(self, path: str) -> str: ...
    def join(self, path: str, name: str) -> str: ...
    def same(self, a: str, b: str) -> bool: ...
    async def identity(self, path: str) -> object: ...  # equal for one directory
    async def is_dir(self, path: str) -> bool | None: ...  # None: does not exist
    async def names(self, path: str) -> list[str]: ...
    async def mkdir(self, path: str) -> None: ...
    def reader(self, path: str) -> contextlib.AbstractAsyncContextManager[Reader]: ...
    def writer(self, path: str, size: int) -> contextlib.AbstractAsyncContextManager[Writer]: ...


class _HostReader:
    """``preadv`` into one page-aligned anonymous mapping, reused for every chunk."""

    def __init__(self, fd: int, buffer: mmap.mmap) -> None:
        self.fd, self.buffer = fd, buffer
        st = os.fstat(fd)
        self.size, self.mtime = st.st_size, st.st_mtime

    async def chunk(self, offset: int, n: int) -> memoryview:
        got = os.preadv(self.fd, [self.buffer], offset)
        return memoryview(self.buffer)[: min(got, n)]


class _HostWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def write(self, data: memoryview) -> None:
        _write_all(self.fd, data)

    async def set_mtime(self, mtime: float) -> None:
        os.utime(self.fd, (time.time(), mtime))


class HostSide:
    """Plain paths: the machine's own files. Symbolic links are followed (FAT has none)."""

    def label(self, path: str) -> str:
        return path

    def join(self, path: str, name: str) -> str:
        return os.path.join(path, name)

    def same(self, a: str, b: str) -> bool:
        with contextlib.suppress(OSError):
            return os.path.samefile(a, b)
        return False

    async def identity(self, path: str) -> object:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)

    async def is_dir(self, path: str) -> bool | None:
        try:
            return stat_module.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            if os.path.islink(path):
                target = os.readlink(path)
                raise Explained(
                    errno.ENOENT, f"dangling symbolic link to {target} (not copied)"
                ) from None
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
    async def writer(self, path: str, size: int) -> AsyncIterator[Writer]:
        """A full host disk removes the partial file, as a full image does."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            yield _HostWriter(fd)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            os.unlink(path)
            raise Explained(
                errno.ENOSPC,
                f"No space left on device ({human(size)} needed; the partial file was removed)",
            ) from None
        finally:
            os.close(fd)


class _ImageReader:
    def __init__(self, f: File, mtime: float) -> None:
        self.f = f
        self.size = f.size
        self.mtime = mtime

    async def chunk(self, offset: int, n: int) -> memoryview:
        return await self.f.view(offset, n)


class _ImageWriter:
    def __init__(self, f: File) -> None:
        self.f = f

    async def write(self, data: memoryview) -> None:
        await self.f.write(data)

    async def set_mtime(self, mtime: float) -> None:
        """The time set here stays: close gives the reservation back without stamping."""
        await self.f.set_times(mtime)


def _utf8(path: str) -> str:
    """A host name with undecodable bytes cannot become a FAT (Unicode) name: say so."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise Explained(
            errno.EILSEQ, "file name is not valid UTF-8; FAT stores Unicode names (not copied)"
        ) from None
    return path


@dataclass
class ImageSide:
    """Paths inside the volume a process of a booted system sees."""

    image: str
    proc: UserProcess

    def label(self, path: str) -> str:
        return str(ImagePath(self.image, path))

    def join(self, path: str, name: str) -> str:
        return posixpath.join(path, name)

    def same(self, a: str, b: str) -> bool:
        return imagepath.normalise(a).casefold() == imagepath.normalise(b).casefold()

    async def identity(self, path: str) -> object:
        return _cluster(await self.proc.stat(path))

    async def is_dir(self, path: str) -> bool | None:
        try:
            return (await self.proc.stat(_utf8(path))).is_dir
        except FileNotFoundError:
            return None

    async def names(self, path: str) -> list[str]:
        entries = await self.proc.scandir(path)
        return sorted(e.name for e in entries if not e.attributes & ATTR_VOLUME)

    async def mkdir(self, path: str) -> None:
        await self.proc.mkdir(_utf8(path), exist_ok=True)

    @contextlib.asynccontextmanager
    async def reader(self, path: str) -> AsyncIterator[Reader]:
        info = await self.proc.stat(path)
        async with await self.proc.open(path, "rb") as f:
            yield _ImageReader(f, info.mtime)

    @contextlib.asynccontextmanager
    async def writer(self, path: str, size: int) -> AsyncIterator[Writer]:
        """Grown chunk by chunk (one ``SetSize`` each), not sized up front: the cache
        must supply a whole extension at once, so a file bigger than it would not fit.

        A file that cannot fit is refused before a byte is written; one that
        meets a full disk anyway (the directory grew, another writer) is
        removed, and either way the message says how much room there was.
        """
        _utf8(path)
        volume = await self.proc.statfs("/")
        cluster = volume.cluster_size
        replaced = 0
        with contextlib.suppress(OSError):
            old = await self.proc.stat(_utf8(path))
            replaced = 0 if old.is_dir else old.alloc_size
        room = volume.free_clusters * cluster + replaced
        need = -(-size // cluster) * cluster
        if need > room:
            raise Explained(errno.ENOSPC, _full(room, need, "nothing was written"))
        full = False
        async with await self.proc.open(path, "wb") as f:
            try:
                yield _ImageWriter(f)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                full = True
        if full:
            await self.proc.unlink(path)
            raise Explained(errno.ENOSPC, _full(room, need, "the partial file was removed"))


def _full(room: int, need: int, outcome: str) -> str:
    return f"No space left on device (the volume has {human(room)} free, the file needs {human(need)}; {outcome})"


class _Bars:
    """rich progress bars on stderr for big files, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        if sys.stderr.isatty():
            self.progress = _progress()

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


def _progress() -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


@dataclass
class Copier:
    """Copies between two sides, reporting each failing file and carrying on.

    Every error names the side it happened on (``Located``): a missing
    destination directory is the destination's fault, not the source's.
    """

    inv: Invocation
    src: Side
    dst: Side
    bars: _Bars

    @property
    def preserve(self) -> bool:
        return bool(self.inv.args.preserve)

    async def _on_dst(self, path: str, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except Located:
            raise
        except OSError as exc:
            raise Located(self.dst.label(path), exc) from exc

    async def file(self, src: str, dst: str) -> None:
        """One file; the source is opened first, so a missing source creates nothing."""
        try:
            async with self.src.reader(src) as reader:
                await self._on_dst(dst, self._into(reader, src, dst))
        except Located:
            raise
        except OSError as exc:
            raise Located(self.src.label(src), exc) from exc

    async def _into(self, reader: Reader, src: str, dst: str) -> None:
        async with self.dst.writer(dst, reader.size) as writer:
            await self._pump(reader, writer, self.src.label(src))
            if self.preserve:
                await writer.set_mtime(reader.mtime)

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

    async def tree(self, src: str, dst: str, above: frozenset[object] = frozenset()) -> None:
        """A directory and everything under it; ``above`` holds the directories on the way
        down, so a symbolic link (or a damaged volume) leading back up ends the descent."""
        if not await self.src.is_dir(src):
            await self.file(src, dst)
            return
        here = await self.src.identity(src)
        if here in above:
            raise Explained(errno.ELOOP, "a directory containing itself (a link loop; not copied)")
        if len(above) >= MAX_DEPTH:
            raise Explained(errno.ELOOP, "directories nested too deep (not copied)")
        await self._on_dst(dst, self.dst.mkdir(dst))
        for name in await self.src.names(src):
            s = self.src.join(src, name)
            try:
                await self.tree(s, self.dst.join(dst, name), above | {here})
            except OSError as exc:
                self.inv.fail(self.src.label(s), exc)

    async def top(self, src: str, dst: str, *, dst_slash: bool = False) -> None:
        """``cp`` rules for the operands: into an existing directory, ``-r`` for directories."""
        kind = await self.src.is_dir(src)
        if kind is None:
            raise Explained(errno.ENOENT, "No such file or directory")
        if kind and not self.inv.args.recursive:
            self.inv.fail(self.src.label(src), "Is a directory (not copied; use -r)")
            return
        name = posixpath.basename(src.rstrip("/"))
        target_kind = await self._on_dst(dst, self.dst.is_dir(dst))
        if target_kind and name:
            dst = self.dst.join(dst, name)
        elif dst_slash and not kind:  # ``cp f IMG::/newdir/``: GNU cp refuses too
            raise Located(
                self.dst.label(dst).rstrip("/") + "/",
                NotADirectoryError(errno.ENOTDIR, "not a directory"),
            )
        if self.src is self.dst and self.src.same(src, dst):
            self.inv.fail(self.src.label(src), "source and destination are the same file")
            return
        if (
            kind
            and self.src is self.dst
            and (dst + "/").casefold().startswith(src.rstrip("/").casefold() + "/")
        ):
            self.inv.fail(self.src.label(src), "cannot copy a directory into itself")
            return
        await (self.tree(src, dst) if kind else self.file(src, dst))


@dataclass
class _Source:
    """One source operand: a host path, or a path in an image (maybe with wildcards)."""

    text: str
    loc: ImagePath | None


async def _copy_one(inv: Invocation, copier: Copier, src: str, dst: str, dst_slash: bool) -> None:
    try:
        await copier.top(src, dst, dst_slash=dst_slash)
    except OSError as exc:
        inv.fail(copier.src.label(src), exc)


async def _cp(inv: Invocation) -> None:
    operands: list[str] = inv.args.operands
    if len(operands) < 2:
        raise UsageError(f"missing destination operand after {operands[0]!r}")
    sources = [_Source(arg, imagepath.parse(arg)) for arg in operands[:-1]]
    target = operands[-1]
    dst = imagepath.parse(target)
    if dst is None and all(s.loc is None for s in sources):
        raise UsageError("no operand is an image path (write IMAGE::/path); use cp(1)")
    several = len(sources) > 1 or any(s.loc is not None and s.loc.has_wildcards for s in sources)
    if dst is None:
        await _cp_to_host(inv, sources, target, several)
    else:
        await _cp_to_image(inv, sources, dst, several)


async def _cp_to_host(inv: Invocation, sources: list[_Source], target: str, several: bool) -> None:
    if several and not os.path.isdir(target):
        inv.fail(target, Explained(errno.ENOTDIR, "target is not a directory (several sources)"))
        return
    host = HostSide()
    slash = target.endswith("/")
    for image, group in itertools.groupby(sources, key=lambda s: s.loc.image if s.loc else None):
        if image is None:
            for s in group:
                inv.fail(s.text, "both sides are host paths (use cp(1))")
            continue
        try:
            async with inv.session(image, writing=False) as proc:
                side = ImageSide(image, proc)
                with _Bars() as bars:
                    copier = Copier(inv, side, host, bars)
                    for s in group:
                        assert s.loc is not None
                        await _copy_expanded(inv, copier, proc, s.loc, target, slash)
        except OSError as exc:
            inv.boot_failed(image, exc)


async def _copy_expanded(
    inv: Invocation, copier: Copier, proc: UserProcess, loc: ImagePath, dst: str, slash: bool
) -> None:
    try:
        matches = await expand(proc, loc)
    except OSError as exc:
        inv.fail(loc, exc)
        return
    for match in matches:
        await _copy_one(inv, copier, match.path, dst, slash)


async def _cp_to_image(
    inv: Invocation, sources: list[_Source], dst: ImagePath, several: bool
) -> None:
    """Sources on other images are staged on the host first (one boot each, read-only);
    then one boot of the destination image copies everything in operand order."""
    with tempfile.TemporaryDirectory(prefix="microkernel-cp-") as staging:
        staged: list[tuple[_Source, list[str]]] = []
        for k, s in enumerate(sources):
            if s.loc is not None and s.loc.image != dst.image:
                staged.append((s, await _stage(inv, s.loc, os.path.join(staging, str(k)))))
            else:
                staged.append((s, []))
        try:
            async with inv.session(dst.image, writing=True) as proc:
                side = ImageSide(dst.image, proc)
                if several and not await side.is_dir(dst.path):
                    inv.fail(
                        dst, Explained(errno.ENOTDIR, "target is not a directory (several sources)")
                    )
                    return
                with _Bars() as bars:
                    from_host = Copier(inv, HostSide(), side, bars)
                    inside = Copier(inv, side, side, bars)
                    for s, paths in staged:
                        if s.loc is None:
                            await _copy_one(inv, from_host, s.text, dst.path, dst.trailing_slash)
                        elif s.loc.image == dst.image:
                            await _copy_expanded(
                                inv, inside, proc, s.loc, dst.path, dst.trailing_slash
                            )
                        for path in paths:
                            await _copy_one(inv, from_host, path, dst.path, dst.trailing_slash)
        except OSError as exc:
            inv.boot_failed(dst.image, exc)


async def _stage(inv: Invocation, loc: ImagePath, directory: str) -> list[str]:
    """Copy ``loc`` (wildcards expanded) out of its image into ``directory``; the staged paths.

    Staged copies keep their names and modification times, so the second step
    follows the same ``cp`` rules (and ``-p``) as a direct copy.
    """
    os.mkdir(directory)
    preserve = inv.args.preserve
    inv.args.preserve = True
    try:
        async with inv.session(loc.image, writing=False) as proc:
            with _Bars() as bars:
                copier = Copier(inv, ImageSide(loc.image, proc), HostSide(), bars)
                await _copy_expanded(inv, copier, proc, loc, directory, False)
    except OSError as exc:
        inv.boot_failed(loc.image, exc)
    finally:
        inv.args.preserve = preserve
    return [os.path.join(directory, name) for name in sorted(os.listdir(directory))]


async def cli_cp(args: argparse.Namespace) -> int:
    """``cp [-r] [-p] SRC... DST`` with either side (or both) an ``IMG::/path``."""
    return await _run(args, _cp)


__all__ = [
    "Invocation",
    "cli_cat",
    "cli_cp",
    "cli_df",
    "cli_du",
    "cli_ls",
    "cli_mkdir",
    "cli_mv",
    "cli_rm",
    "cli_rmdir",
    "cli_stat",
    "expand",
    "human",
    "system_config",
]
