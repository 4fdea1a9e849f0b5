"""A hostile process's toolkit: every message type of every protocol, built from live values.

The attacker has only its own port (a :class:`clients.process.UserProcess`
endpoint). It knows what an attacker could learn or guess: its own handles
and the victim's (handles are small integers), tags counting up from 1, the
physical addresses of real frames (the victim's file pages, FileMaps), device,
file-system and process port names. :func:`build` fills every field of a
message type from those pools by the field's name and type, so each body is
well formed and decodes on the receiving side; only authority can stop it.

:class:`Scene` boots a system with a victim that holds a secret file open and
mapped, takes a snapshot of what the attacker must never change (the victim's
mappings, those frames' owners and reference counts, the cache's pins and the
frames each owner holds), and checks the invariants after an attack.
"""

from __future__ import annotations

import errno
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import msgspec
from msgspec import inspect

import drivers.protocol
import microkernel
import microkernel.protocol
import servers.cache.protocol
import servers.fat.protocol
import servers.vfs.protocol
from clients.file import File
from clients.process import UserProcess
from microkernel.boot import System
from microkernel.config import DeviceConfig, SystemConfig
from microkernel.errors import CallTimeout, CapabilityDenied, MalformedMessage
from microkernel.memory import PAGE_SIZE

PROTOCOLS: tuple[ModuleType, ...] = (
    microkernel.protocol,
    drivers.protocol,
    servers.cache.protocol,
    servers.fat.protocol,
    servers.vfs.protocol,
)
SECRET = b"TOP-SECRET:" + bytes(range(32, 127))  # a marker no other file holds
EVIL = b"EVIL" * 1024
CALL_TIMEOUT = 3.0


def message_classes() -> list[type[msgspec.Struct]]:
    """Every tagged message type (requests, replies, notifications) of every protocol."""
    out: list[type[msgspec.Struct]] = []
    for module in PROTOCOLS:
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, msgspec.Struct)
                and obj.__module__ == module.__name__
                and obj.__struct_config__.tag is not None
            ):
                out.append(obj)
    return out


@dataclass
class Live:
    """Values the attacker knows or guesses, by the field names that take them."""

    handles: list[int]
    tags: list[int]
    frames: list[int]
    lbas: list[int]
    devices: list[str]
    ports: list[str]
    paths: list[str]
    offsets: list[int] = field(default_factory=lambda: [0, PAGE_SIZE, -PAGE_SIZE, 1 << 31])
    sizes: list[int] = field(default_factory=lambda: [0, 1, 8, PAGE_SIZE, 1 << 20, -1])

    def pool(self, name: str) -> Sequence[Any]:
        by_name: dict[str, Sequence[Any]] = {
            "handle": self.handles,
            "fs_handle": self.handles,
            "tag": self.tags,
            "request": self.tags,
            "phys": self.frames,
            "lba": self.lbas,
            "pages": self.lbas,
            "position": self.offsets,
            "offset": self.offsets,
            "file_offset": self.offsets,
            "device": self.devices,
            "notify": self.ports,
            "path": self.paths,
            "src": self.paths,
            "dst": self.paths,
            "flags": [1, 2, 3, 7, 2 | 4 | 16, 0x7F],
            "errno": [errno.EIO, errno.ENOSPC],
            "data": [EVIL],
            "mtime": [0.0, 1e9],
        }
        return by_name.get(name, ())


Pick = Callable[[Sequence[Any]], Any]


def build(cls: type[msgspec.Struct], live: Live, pick: Pick) -> msgspec.Struct:
    """A well-formed ``cls`` whose fields come from the live pools (``pick`` chooses)."""
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    values = {f.name: _value(f.name, f.type, live, pick) for f in info.fields}
    return cls(**values)


def _value(name: str, tp: inspect.Type, live: Live, pick: Pick) -> Any:
    pool = live.pool(name)
    if isinstance(tp, inspect.ListType):
        count = pick([1, 2, 3])
        return [_value(name, tp.item_type, live, pick) for _ in range(count)]
    if isinstance(tp, inspect.StructType):
        return build(tp.cls, live, pick)
    if isinstance(tp, inspect.IntType):
        return pick([v for v in pool if isinstance(v, int)] or live.sizes)
    if isinstance(tp, inspect.FloatType):
        return float(pick(pool or [0.0]))
    if isinstance(tp, inspect.BoolType):
        return pick([False, True])
    if isinstance(tp, inspect.BytesType):
        return pick([EVIL, b""])
    if isinstance(tp, inspect.StrType):
        return pick([v for v in pool if isinstance(v, str)] or [*live.devices, *live.ports])
    if isinstance(tp, inspect.DictType):
        return {}
    if isinstance(tp, inspect.UnionType):
        return _value(name, tp.types[0], live, pick)
    if isinstance(tp, inspect.TupleType | inspect.VarTupleType):
        return ()
    return None


@dataclass
class Tally:
    """What a sweep did: message types x servers tried, and how each ended."""

    tried: int = 0
    pairs: set[tuple[str, str]] = field(default_factory=set)
    refused: int = 0
    malformed: int = 0
    other_errors: int = 0
    accepted: int = 0
    timeouts: int = 0
    leaks: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"pairs(type x server)={len(self.pairs)} messages={self.tried} "
            f"refused={self.refused} malformed={self.malformed} "
            f"other_errors={self.other_errors} accepted={self.accepted} "
            f"timeouts={self.timeouts} leaks={len(self.leaks)}"
        )


async def attack(
    attacker: UserProcess, dst: str, msg: msgspec.Struct, tally: Tally, *, call: bool
) -> None:
    """Send one hostile message; record the outcome and any secret byte that came back."""
    endpoint = attacker.kernel.endpoint
    tally.tried += 1
    tally.pairs.add((f"{type(msg).__module__}.{type(msg).__name__}", dst))
    try:
        if call:
            reply: Any = await endpoint.call(dst, msg, Any, timeout=CALL_TIMEOUT)
            if SECRET[:16] in msgspec.msgpack.encode(reply):
                tally.leaks.append(f"{type(msg).__name__} to {dst} returned secret bytes")
        else:
            await endpoint.send(dst, msg)
    except CapabilityDenied:
        tally.refused += 1
        return
    except MalformedMessage:
        tally.malformed += 1
        return
    except CallTimeout:
        tally.timeouts += 1
        return
    except OSError:
        tally.other_errors += 1
        return
    tally.accepted += 1


@dataclass
class Snapshot:
    """What only the victim (and the servers acting for it) may change."""

    victim_frames: dict[int, int]  # window offset -> phys
    frame_state: dict[int, tuple[str | None, int]]  # phys -> (owner, refcount)
    pins: dict[tuple[str, int], int]  # (device, lba) -> pins
    owners: dict[str, int]  # frames held per owner, servers only


@dataclass
class Scene:
    """A booted system, a victim with a secret file open and mapped, and an attacker."""

    system: System
    victim: UserProcess
    victim_file: File
    attacker: UserProcess
    attacker_handle: int
    live: Live
    image: Path

    def victim_window_frames(self) -> dict[int, int]:
        window = self.victim.kernel.windows[self.victim_file.handle]
        return window.mapped_frames()

    def snapshot(self) -> Snapshot:
        mem = self.system.memory
        frames = self.victim_window_frames()
        state = {p: (mem.owner_of(p), mem.refcount(p)) for p in frames.values()}
        cache = self.system.server("cache")
        # Pages of closed files the kernel file driver keeps (its LRU, docs/architecture.md
        # §6) come and go with any process's opens and closes: every other pin must stay.
        vfs = self.system.server("vfs")
        kept = Counter(
            (vfs.volumes[r.key[0]].device, fp.cache_lba)  # type: ignore[attr-defined]
            for r in vfs.retained.records.values()  # type: ignore[attr-defined]
            for fp in r.pages.values()
        )
        pins = {
            (dev, lba): page.pins - kept[(dev, lba)]
            for dev, table in cache.core.tables.items()  # type: ignore[attr-defined]
            for lba, page in table.items()
            if page.pins - kept[(dev, lba)]
        }
        owners = {
            k: v for k, v in mem.statistics().frames_by_owner.items() if not k.startswith("proc")
        }
        return Snapshot(frames, state, pins, owners)

    async def check(self, before: Snapshot, tally: Tally) -> list[str]:
        """Invariants after an attack (the attacker has exited): a list of violations."""
        bad = list(tally.leaks)
        with anyio.fail_after(30):
            bad += await self._servers_answer()
            await self._write_out_metadata()
            after = self.snapshot()
        if after.victim_frames != before.victim_frames:
            bad.append("the victim's mapping changed")
        if after.frame_state != before.frame_state:
            bad.append(f"victim frames changed owner/refs: {before.frame_state} -> "
                       f"{after.frame_state}")
        if after.pins != before.pins:
            bad.append(f"cache pins changed: {before.pins} -> {after.pins}")
        if after.owners.get("vfs", 0) != before.owners.get("vfs", 0):
            bad.append(f"vfs frames {before.owners.get('vfs')} -> {after.owners.get('vfs')}")
        with anyio.fail_after(30):
            bad += await self._contents()
        for srv in self.system.servers:
            if srv.statistics().crashes:
                bad.append(f"{srv.name} crashed {srv.statistics().crashes} times")
        return bad

    async def _write_out_metadata(self) -> None:
        """File systems hold pins on metadata pages waiting for their write order
        (docs/fat.md): write them out, so the pins compared are the lasting ones."""
        from microkernel.protocol import Ok
        from servers.fs.protocol import FsFsync

        for srv in self.system.servers:
            if srv.name.startswith("fat"):
                await self.system.kernel.call(srv.name, FsFsync(0), Ok, timeout=30)

    async def _servers_answer(self) -> list[str]:
        from drivers.protocol import DriverStats, GetStats
        from servers.cache.protocol import CacheStats, GetCacheStats
        from servers.fs.protocol import FsStatFs, FsVolume

        kernel = self.system.kernel
        bad = []
        for srv in self.system.servers:
            probe: tuple[msgspec.Struct, type] | None = {
                "cache": (GetCacheStats(), CacheStats),
            }.get(srv.name)
            if srv.name.startswith("fat"):
                probe = (FsStatFs(), FsVolume)
            elif srv.name in self.live.devices:
                probe = (GetStats(), DriverStats)
            if probe is None:
                continue
            try:
                await kernel.call(srv.name, probe[0], probe[1], timeout=10)
            except OSError as exc:
                bad.append(f"{srv.name} does not answer: {exc!r}")
        fresh = await self.system.spawn("probe")
        try:
            await fresh.stat("/")
        except OSError as exc:
            bad.append(f"vfs does not answer: {exc!r}")
        finally:
            await fresh.exit()
        return bad

    async def _contents(self) -> list[str]:
        bad = []
        seen = bytes(await self.victim_file.view(0, len(SECRET)))
        if seen != SECRET:
            bad.append(f"the victim's mapping reads {seen[:24]!r}, not the secret")
        fresh = await self.system.spawn("reader")
        try:
            if await fresh.read_file("/secret.txt") != SECRET:
                bad.append("/secret.txt changed")
            for entry in await fresh.scandir("/"):
                if entry.is_dir or entry.name.lower() == "secret.txt":
                    continue
                if SECRET[:16] in await fresh.read_file("/" + entry.name):
                    bad.append(f"/{entry.name} holds secret bytes")
        finally:
            await fresh.exit()
        return bad


def guessed(n: int) -> list[int]:
    return list(range(1, n + 1))


@asynccontextmanager
async def scene(image: Path, second: Path) -> AsyncIterator[Scene]:
    """Boot two devices; the victim maps /secret.txt, the attacker opens /attacker.txt."""
    cfg = SystemConfig(
        memory="48M",
        devices=[DeviceConfig(image=str(image)), DeviceConfig(image=str(second))],
    )
    async with microkernel.boot(config=cfg) as system:
        victim = await system.spawn("victim")
        vf = await victim.open("/secret.txt", "rb")
        assert await vf.read() == SECRET
        attacker = await system.spawn("attacker")
        af = await attacker.open("/attacker.txt", "r+b")
        await af.read()
        await af.close()  # the handle number stays a live value; the baseline holds no window
        memory = system.memory
        vfs_frames = memory.frames_of("vfs")
        victim_frames = sorted(set(victim.kernel.windows[vf.handle].mapped_frames().values()))
        devices = [d.name for d in cfg.devices]
        cache = system.server("cache")
        lbas = sorted(
            {lba for table in cache.core.tables.values() for lba in table}  # type: ignore[attr-defined]
        )[:8]
        live = Live(
            handles=sorted({af.handle, vf.handle, *guessed(4), 0, -1}),
            tags=[*guessed(6), 1 << 31],
            frames=[*victim_frames, *vfs_frames[:4], memory.phys_of(0)],
            lbas=lbas or [0],
            devices=[*devices, "nvme9"],
            ports=[attacker.kernel.port, victim.kernel.port, "vfs", "fat0", "cache"],
            paths=["/attacker.txt", "/", "/nope", f"/{devices[1]}/other.txt"],
        )
        yield Scene(system, victim, vf, attacker, af.handle, live, image)
        await vf.close()


def targets(system: System) -> list[str]:
    """Every port that has an inbox: all servers."""
    return sorted(name for name, port in system.router.ports.items() if port.inbox is not None)


def sweep_plan(live: Live, ports: list[str], variants: int) -> list[tuple[str, msgspec.Struct]]:
    """Every message type to every server, ``variants`` bodies each, cycling through the pools."""
    plan: list[tuple[str, msgspec.Struct]] = []
    counter = itertools.count()

    def pick(pool: Sequence[Any]) -> Any:
        return pool[next(counter) % len(pool)]

    for dst in ports:
        for cls in message_classes():
            for _ in range(variants):
                plan.append((dst, build(cls, live, pick)))
    return plan
