"""The ``microkernel`` command line (DESIGN §7).

Every command that touches an image boots the whole system on it and works
through the file library, so each one exercises the real message path. An
image path inside a command is written ``IMAGE::/path`` like mtools' ``::``.
Exit codes follow the Unix tools: 0 success, 1 an operation failed (message
naming the file), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from microkernel.units import parse_size

FAULT_KINDS = ("delay", "latency", "eio")  # microkernel.sim.FAULT_KINDS, without importing it

Command = Callable[[argparse.Namespace], Awaitable[int]]


def _add_global(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("global options")
    g.add_argument(
        "--driver", default=argparse.SUPPRESS, help="driver NAME or module:Class (default nvme)"
    )
    g.add_argument(
        "--trace", default=argparse.SUPPRESS, metavar="FILE", help="write JSON-lines trace"
    )
    g.add_argument(
        "--stats", default=argparse.SUPPRESS, metavar="FILE", help="write counters as JSON"
    )
    g.add_argument(
        "--memory", default=argparse.SUPPRESS, metavar="SIZE", help="RAM size (default 256M)"
    )
    g.add_argument("--uvloop", action="store_true", default=argparse.SUPPRESS, help="run on uvloop")
    g.add_argument(
        "--partition", type=int, default=argparse.SUPPRESS, metavar="N", help="MBR partition N"
    )
    g.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log info events"
    )
    g.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="TOML", help="boot configuration file"
    )


GLOBAL_DEFAULTS: dict[str, Any] = {
    "driver": "nvme",
    "trace": None,
    "stats": None,
    "memory": "256M",
    "uvloop": False,
    "partition": 0,
    "verbose": False,
    "config": None,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microkernel", description="A zero-copy microkernel file system, modelled in asyncio."
    )
    _add_global(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _add_global(p)
        return p

    p = cmd("run", "boot the system and run the demo workload")
    p.add_argument("--image", help="FAT image (default: a fresh one in a temporary directory)")
    p = cmd("mkfs", "make a FAT12/16/32 image")
    p.add_argument("image")
    p.add_argument("--size", required=True, help="image size, e.g. 64M")
    p.add_argument("--fat", type=int, choices=(12, 16, 32))
    p.add_argument("--cluster", type=parse_size, default=4096, help="cluster size in bytes")
    p.add_argument("--sector", type=int, choices=(512, 4096), default=512)
    p.add_argument("--label", default="NO NAME")
    p.add_argument(
        "--partition-start", type=int, help="put the volume in MBR partition 1 at this sector"
    )
    p.add_argument("--unaligned", action="store_true", help="misalign the data region (copy path)")
    p = cmd("ls", "list a directory")
    p.add_argument("path")
    p.add_argument("-l", action="store_true", dest="long", help="long listing")
    p.add_argument("-a", action="store_true", dest="all", help="include hidden and dot entries")
    p = cmd("cat", "print files")
    p.add_argument("paths", nargs="+")
    p = cmd("stat", "show file status")
    p.add_argument("paths", nargs="+")
    p = cmd("cp", "copy files (either side IMG::/path)")
    p.add_argument("-r", action="store_true", dest="recursive")
    p.add_argument("src")
    p.add_argument("dst")
    p = cmd("mkdir", "make directories")
    p.add_argument("-p", action="store_true", dest="parents")
    p.add_argument("paths", nargs="+")
    p = cmd("rmdir", "remove empty directories")
    p.add_argument("paths", nargs="+")
    p = cmd("rm", "remove files")
    p.add_argument("-r", action="store_true", dest="recursive")
    p.add_argument("-f", action="store_true", dest="force")
    p.add_argument("paths", nargs="+")
    p = cmd("mv", "rename or move")
    p.add_argument("src")
    p.add_argument("dst")
    p = cmd("mount", "serve an image through FUSE")
    p.add_argument("image")
    p.add_argument("mountpoint")
    p.add_argument("-f", "--foreground", action="store_true", help="(always foreground)")
    p = cmd("trace", "render a JSON-lines trace")
    p.add_argument("file")
    p.add_argument("--format", choices=("perfetto", "mermaid", "summary"), default="summary")
    p.add_argument("--corr", type=int, help="correlation id to draw (mermaid)")
    p.add_argument("-o", "--output", help="output file (default stdout)")
    p = cmd("bench", "run the benchmarks")
    p.add_argument("--json", metavar="FILE", help="also write results as JSON")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller files")
    p.add_argument("--only", help="comma-separated benchmark names")
    p = cmd("torture", "seeded simulated runs with faults and power cuts (microkernel.sim)")
    p.add_argument("--seed", type=int, default=1, help="the (first) seed")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed on")
    p.add_argument("--ops", type=int, default=60, help="operations per run, over all processes")
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--faults", default="", help=f"comma-separated: {','.join(FAULT_KINDS)}")
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
    from microkernel import mkfs

    options: dict[str, Any] = {"unaligned": args.unaligned}
    if args.partition_start is not None:
        options["partition_start"] = args.partition_start
    mkfs(
        args.image,
        size=args.size,
        fat=args.fat,
        cluster_size=args.cluster,
        sector_size=args.sector,
        label=args.label,
        **options,
    )
    print(f"{args.image}: FAT{args.fat or ''} file system, {args.size}")
    return 0


async def cli_trace(args: argparse.Namespace) -> int:
    from microkernel.traceview import render

    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            render(args.file, args.format, corr=args.corr, out=out)
    else:
        render(args.file, args.format, corr=args.corr, out=sys.stdout)
    return 0


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
