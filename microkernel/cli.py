"""The ``microkernel`` command line (see README.md).

Every command that touches an image boots the whole system on it and works
through the file library, so each one exercises the real message path. An
image path inside a command is written ``IMAGE::/path`` like mtools' ``::``.
Exit codes follow the Unix tools: 0 success, 1 an operation failed (message
naming the file), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from microkernel.units import parse_size

FAULT_KINDS = ("delay", "latency", "eio")  # microkernel.sim.FAULT_KINDS, without importing it

Command = Callable[[argparse.Namespace], Awaitable[int]]

GLOBAL_HELP = "global options (see `microkernel --help`) may also follow the command"


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib import metadata

        try:
            version = metadata.version("microkernel")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        print(f"microkernel {version}")
        parser.exit()


def _add_global(p: argparse.ArgumentParser, *, shown: bool) -> None:
    """The options every command takes; described once, in ``microkernel --help``.

    Each subcommand accepts them too (``microkernel ls --driver ahci IMG::/``),
    with their help suppressed so it is not repeated in every command's help.
    """

    def say(text: str) -> str:
        return text if shown else argparse.SUPPRESS

    g = p.add_argument_group("global options") if shown else p
    g.add_argument(
        "--driver",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help=say(
            "block driver: nvme, ahci, ahci32, ide, ide-dma, ide-pio, ramdisk or module:Class"
        ),
    )
    g.add_argument(
        "--driver-option",
        action="append",
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        dest="driver_options",
        help=say("an option for the driver, e.g. write_back=false for ramdisk (repeatable)"),
    )
    g.add_argument(
        "--read-only",
        action="store_true",
        default=argparse.SUPPRESS,
        help=say("open the image read-only; every change is refused (EROFS)"),
    )
    g.add_argument(
        "--partition",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=say("use the volume in MBR partition N (default 0: the whole image)"),
    )
    g.add_argument(
        "--memory", default=argparse.SUPPRESS, metavar="SIZE", help=say("RAM size (default 256M)")
    )
    g.add_argument(
        "--trace",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=say("write every message as JSON lines"),
    )
    g.add_argument(
        "--stats", default=argparse.SUPPRESS, metavar="FILE", help=say("write the counters as JSON")
    )
    g.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="TOML", help=say("boot configuration file")
    )
    g.add_argument(
        "--uvloop", action="store_true", default=argparse.SUPPRESS, help=say("run on uvloop")
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help=say("log info events; add the kernel's explanation to each error"),
    )


GLOBAL_DEFAULTS: dict[str, Any] = {
    "driver": "nvme",
    "driver_options": [],
    "read_only": False,
    "trace": None,
    "stats": None,
    "memory": "256M",
    "uvloop": False,
    "partition": 0,
    "verbose": False,
    "config": None,
}

IMAGE_PATHS = "IMG::/path (quote wildcards: 'IMG::/docs/*.txt')"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microkernel",
        description="A zero-copy microkernel file system, modelled in asyncio. "
        "A path inside an image is written IMG::/path, like mtools' ::.",
    )
    parser.add_argument("--version", action=_Version)
    _add_global(parser, shown=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=GLOBAL_HELP, **kwargs)
        _add_global(p, shown=False)
        return p

    p = cmd("run", "boot the system and run the demo workload")
    p.add_argument("--image", help="FAT image (default: a fresh one in a temporary directory)")
    p.add_argument(
        "--keep", action="store_true", help="keep the fresh demo image and print its path"
    )
    p = cmd("mkfs", "make a FAT12/16/32 image")
    p.add_argument("image", help="the image file to create")
    p.add_argument("--size", required=True, help="image size, e.g. 64M")
    p.add_argument("--fat", type=int, choices=(12, 16, 32), help="FAT type (default: by size)")
    p.add_argument("--cluster", type=parse_size, default=4096, help="cluster size in bytes")
    p.add_argument("--sector", type=int, choices=(512, 4096), default=512, help="sector size")
    p.add_argument("--label", default="NO NAME", help="volume label (11 characters)")
    p.add_argument(
        "--partition-start", type=int, help="put the volume in MBR partition 1 at this sector"
    )
    p.add_argument("--unaligned", action="store_true", help="misalign the data region (copy path)")
    p.add_argument(
        "-f", "--force", action="store_true", help="overwrite an existing non-empty file"
    )
    p = cmd("ls", "list directories")
    p.add_argument("paths", nargs="+", metavar="PATH", help=IMAGE_PATHS)
    p.add_argument(
        "-l", action="store_true", dest="long", help="long listing: attributes, size, mtime"
    )
    p.add_argument("-a", action="store_true", dest="all", help="include hidden and system entries")
    p.add_argument("-R", action="store_true", dest="recursive", help="list subdirectories too")
    p = cmd("cat", "print files")
    p.add_argument("paths", nargs="+", metavar="PATH", help=IMAGE_PATHS)
    p = cmd("stat", "show file status")
    p.add_argument("paths", nargs="+", metavar="PATH", help=IMAGE_PATHS)
    p = cmd(
        "cp",
        "copy files; the last operand is the destination (either side IMG::/path)",
        usage="microkernel cp [-h] [-r] [-p] SRC... DST",
    )
    p.add_argument(
        "-r", "-R", action="store_true", dest="recursive", help="copy directories recursively"
    )
    p.add_argument(
        "-p",
        "-m",
        action="store_true",
        dest="preserve",
        help="keep modification times (-m as in mcopy)",
    )
    p.add_argument(
        "operands", nargs="+", metavar="SRC DST", help="sources, then the destination"
    )
    p = cmd("mkdir", "make directories")
    p.add_argument(
        "-p", action="store_true", dest="parents", help="make parents; no error if it exists"
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="IMG::/path")
    p = cmd("rmdir", "remove empty directories")
    p.add_argument("paths", nargs="+", metavar="PATH", help="IMG::/path")
    p = cmd("rm", "remove files")
    p.add_argument(
        "-r",
        "-R",
        action="store_true",
        dest="recursive",
        help="remove directories and their contents",
    )
    p.add_argument("-f", action="store_true", dest="force", help="ignore missing operands")
    p.add_argument("paths", nargs="+", metavar="PATH", help=IMAGE_PATHS)
    p = cmd("mv", "rename or move inside one image")
    p.add_argument("src", help="IMG::/path")
    p.add_argument("dst", help="IMG::/path (into it when it is a directory)")
    p = cmd("du", "disk space used by files and directories", conflict_handler="resolve")
    p.add_argument("paths", nargs="+", metavar="PATH", help=IMAGE_PATHS)
    p.add_argument(
        "-s", action="store_true", dest="summarize", help="only a total for each operand"
    )
    p.add_argument(
        "-a", action="store_true", dest="all", help="list files too, not only directories"
    )
    p.add_argument(
        "-h", "--human-readable", action="store_true", dest="human", help="sizes as 4.0K, 1.2M"
    )
    p = cmd("df", "size, used and free space of images", conflict_handler="resolve")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files (IMG or IMG::)")
    p.add_argument(
        "-h", "--human-readable", action="store_true", dest="human", help="sizes as 4.0K, 1.2M"
    )
    p = cmd("mount", "serve an image through FUSE (read-write unless --read-only)")
    p.add_argument("image", help="the image file")
    p.add_argument("mountpoint", help="an existing directory")
    p.add_argument("-f", "--foreground", action="store_true", help="(always foreground)")
    p = cmd("trace", "render a JSON-lines trace")
    p.add_argument("file", help="a trace written with --trace FILE")
    p.add_argument(
        "--format",
        choices=("perfetto", "mermaid", "summary"),
        default="summary",
        help="output format",
    )
    p.add_argument(
        "--corr",
        metavar="ID|SYSCALL",
        help="one system call: a correlation id the summary lists, or a syscall name "
        "(e.g. Open) for the first call of that kind",
    )
    p.add_argument("-o", "--output", help="output file (default stdout)")
    p = cmd("bench", "run the benchmarks")
    p.add_argument("--json", metavar="FILE", help="also write results as JSON")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller files")
    p.add_argument("--only", help="comma-separated benchmark names")
    p = cmd("torture", "seeded simulated runs with faults and power cuts (microkernel.sim)")
    p.add_argument("--seed", type=int, default=1, help="the (first) seed")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed on")
    p.add_argument("--ops", type=int, default=60, help="operations per run, over all processes")
    p.add_argument("--processes", type=int, default=3, help="user processes running the workload")
    p.add_argument("--faults", default="",
                   help=f"comma-separated fault kinds, or 'all': {','.join(FAULT_KINDS)}")
    return parser


def _handler(command: str) -> Command:
    targets = {
        "run": "clients.demo:cli_run",
        "mkfs": "microkernel.cli:cli_mkfs",
        "trace": "microkernel.cli:cli_trace",
        "mount": "clients.fuse:cli_mount",
        "bench": "clients.bench:cli_bench",
        "torture": "microkernel.sim:cli_torture",
    }
    module, attr = targets.get(command, f"clients.commands:cli_{command}").split(":")
    fn: Command = getattr(importlib.import_module(module), attr)
    return fn


async def cli_mkfs(args: argparse.Namespace) -> int:
    """Make an image; an existing non-empty file is replaced only with ``--force``."""
    from microkernel import imagelock, mkfs

    options: dict[str, Any] = {"unaligned": args.unaligned}
    if args.partition_start is not None:
        options["partition_start"] = args.partition_start
    size = parse_size(args.size)
    if args.read_only:
        _say("mkfs", f"{args.image}: --read-only forbids making a file system")
        return 2
    if _non_empty(args.image) and not args.force:
        _say("mkfs", f"{args.image}: exists and is not empty; use --force to overwrite it")
        return 1
    with imagelock.locked([(args.image, True)] if os.path.exists(args.image) else []):
        mkfs(
            args.image,
            size=size,
            fat=args.fat,
            cluster_size=args.cluster,
            sector_size=args.sector,
            label=args.label,
            **options,
        )
    print(f"{args.image}: FAT{args.fat or ''} file system, {args.size}")
    return 0


def _non_empty(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _say(command: str, text: str) -> None:
    print(f"microkernel {command}: {text}", file=sys.stderr)


async def cli_trace(args: argparse.Namespace) -> int:
    """Render a trace; a file that is not one (or a wrong ``--corr``) is one line, exit 1."""
    from microkernel.traceview import TraceViewError, parse, render, syscall_kinds

    try:
        trace = parse(args.file)
        corr = _corr_id(args.corr, syscall_kinds(trace)) if args.corr is not None else None
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                render(trace, args.format, corr=corr, out=out)
        else:
            render(trace, args.format, corr=corr, out=sys.stdout)
    except TraceViewError as exc:
        _say("trace", f"{args.file}: {exc.strerror}")
        return 1
    return 0


def _corr_id(text: str, kinds: dict[int, str]) -> int:
    """``--corr 38`` or ``--corr Open`` (the first Open): ids change with every run."""
    from microkernel.traceview import TraceViewError

    if text.isdigit():
        return int(text)
    for corr, kind in kinds.items():
        if kind.casefold() == text.casefold():
            return corr
    names = ", ".join(sorted(set(kinds.values()))) or "none"
    raise TraceViewError(f"--corr {text}: not a number nor a system call in the trace ({names})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    try:
        handler = _handler(args.command)
    except (ImportError, AttributeError) as exc:
        print(f"microkernel {args.command}: not available in this build ({exc})", file=sys.stderr)
        return 2
    from microkernel.boot import run
    from microkernel.config import ConfigError, load_config

    try:
        use_uvloop = args.uvloop or (args.config is not None and load_config(args.config).uvloop)
        result: int = run(lambda: handler(args), use_uvloop=use_uvloop)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        name = f"{exc.filename}: " if exc.filename else ""
        print(f"microkernel {args.command}: {name}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except (ValueError, ConfigError) as exc:
        print(f"microkernel {args.command}: {exc}", file=sys.stderr)
        return 2
    return result
