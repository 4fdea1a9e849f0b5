"""The conformance kit's harness: driver cases, a test rig, and scatter/gather builders.

A :class:`Rig` is one booted driver on a fresh random image with its own
physical memory (a low and a high zone) and a client port, so every test
talks to the driver only through messages, as the cache does.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
import pytest

from drivers.base import BlockDriver
from drivers.conformance import DRIVER_OPTION, DRIVER_OPTIONS_OPTION
from drivers.errors import DriverConfigError
from drivers.protocol import DriverStats, Geometry, GetStats, Identify, IoDone, Read, Segment, Write
from drivers.registry import load_driver
from microkernel.ipc import Endpoint, Router
from microkernel.memory import PAGE_SIZE, PhysicalMemory, Zone
from microkernel.stats import Statistics

T = TypeVar("T")
IMAGE_BYTES = 4 << 20
MEMORY_BYTES = 8 << 20
LOW_BYTES = 4 << 20
SECTOR_SIZES = (512, 4096)


@dataclass(frozen=True)
class DriverCase:
    """A driver under test: spec, constructor options, and what the kit may assume about it.

    ``arbitrary_subpage``: whether sg segments of any (even) size and offset are
    accepted; ``pio``: whether the driver moves data by (counted) CPU copies.
    ``None`` means the kit does not know (either outcome passes, a rejection
    must be EINVAL). ``builtin``: a construction failure is a failure, not a skip.
    """

    spec: str
    logical_sector_size: int
    options: Mapping[str, Any] = field(default_factory=dict)
    arbitrary_subpage: bool | None = None
    builtin: bool = False
    pio: bool | None = None

    @property
    def id(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.spec}{'[' + opts + ']' if opts else ''}-{self.logical_sector_size}"


# spec, options, arbitrary sub-page segments accepted, PIO
_BUILTINS: tuple[tuple[str, dict[str, Any], bool, bool], ...] = (
    ("nvme", {}, False, False),
    ("ahci", {"s64a": True}, True, False),
    ("ahci", {"s64a": False}, True, False),
    ("ide", {"mode": "pio"}, True, True),
    ("ide", {"mode": "dma"}, True, False),
    ("ramdisk", {"write_back": True}, True, False),
)


def builtin_cases() -> list[DriverCase]:
    return [
        DriverCase(spec, lss, options, subpage, builtin=True, pio=pio)
        for spec, options, subpage, pio in _BUILTINS
        for lss in SECTOR_SIZES
    ]


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with true/false/none and integers converted."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise pytest.UsageError(f"--driver-option wants KEY=VALUE, got {text!r}")
    lowered = raw.lower()
    value: Any = {"true": True, "false": False, "none": None}.get(lowered, raw)
    if value is raw:
        with suppress(ValueError):
            value = int(raw, 0)
    return key, value


def cases_from_config(config: pytest.Config) -> list[DriverCase]:
    """The ``--driver`` cases (each at both sector sizes) or, without it, the built-ins."""
    specs: list[str] | None = config.getoption(DRIVER_OPTION, default=None)
    if not specs:
        return builtin_cases()
    for spec in specs:
        try:
            load_driver(spec)
        except OSError as exc:  # a bad spec is a usage error, not 32 failing tests
            raise pytest.UsageError(f"--driver={spec}: {exc.strerror}") from exc
    raw: list[str] = config.getoption(DRIVER_OPTIONS_OPTION, default=None) or []
    options = dict(parse_option(text) for text in raw)
    return [DriverCase(spec, lss, options) for spec in specs for lss in SECTOR_SIZES]


def random_image(path: Path, size: int, seed: int) -> bytes:
    """A file of ``size`` bytes of seeded random data (with no MBR signature)."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[510:512] = b"\0\0"  # random bytes must not look like a partition table by chance
    path.write_bytes(data)
    return bytes(data)


@dataclass
class Rig:
    """One driver serving on a random image, plus the memory and client the tests use."""

    case: DriverCase
    image: Path
    memory: PhysicalMemory
    router: Router
    driver: BlockDriver
    client: Endpoint
    geometry: Geometry

    @property
    def lss(self) -> int:
        return self.geometry.logical_sector_size

    async def call(self, msg: msgspec.Struct, reply: type[T], timeout: float = 10.0) -> T:
        return await self.client.call(self.driver.name, msg, reply, timeout=timeout)

    async def read(self, lba: int, sg: Sequence[Segment], timeout: float = 10.0) -> IoDone:
        count = sum(s.length for s in sg) // self.lss
        return await self.call(Read(lba, count, list(sg)), IoDone, timeout)

    async def write(self, lba: int, sg: Sequence[Segment], timeout: float = 10.0) -> IoDone:
        count = sum(s.length for s in sg) // self.lss
        return await self.call(Write(lba, count, list(sg)), IoDone, timeout)

    async def stats(self) -> DriverStats:
        return await self.call(GetStats(), DriverStats)

    def counters(self) -> Statistics:
        return self.router.counters.snapshot(frames_free=self.memory.frames_free)

    def frames(self, count: int, zone: Zone) -> list[int]:
        return self.memory.alloc("conformance", count, zone)

    def gather(self, sg: Sequence[Segment]) -> bytes:
        return b"".join(bytes(self.memory.view(s.phys, s.length)) for s in sg)

    def scatter(self, sg: Sequence[Segment], data: bytes) -> None:
        offset = 0
        for s in sg:
            self.memory.view(s.phys, s.length)[:] = data[offset : offset + s.length]
            offset += s.length

    def image_bytes(self, lba: int, nbytes: int) -> bytes:
        with self.image.open("rb") as f:
            f.seek(lba * self.lss)
            return f.read(nbytes)


@asynccontextmanager
async def open_rig(
    case: DriverCase,
    tmp_path: Path,
    *,
    seed: int = 1,
    contents: bytes | None = None,
    image: Path | None = None,
) -> AsyncIterator[Rig]:
    """Boot the case's driver on a fresh image (or ``image`` as it is); stop it afterwards.

    Stopping releases hung commands, so a test may end with the device hung.
    """
    if image is None:
        image = tmp_path / "disk.img"
        if contents is None:
            random_image(image, IMAGE_BYTES, seed)
        else:
            image.write_bytes(contents)
    memory = PhysicalMemory(MEMORY_BYTES, low_size=LOW_BYTES)
    router = Router(counters=memory.counters)
    failure: Exception | None = None
    try:
        driver = _construct(case, router, memory, image)
        client = router.register("conformance-client", 0)
        async with anyio.create_task_group() as tg:
            await tg.start(driver.serve)
            try:
                geometry: Geometry = await client.call(
                    driver.name, Identify(), Geometry, timeout=10.0
                )
                yield Rig(case, image, memory, router, driver, client, geometry)
            except Exception as exc:  # re-raised below, unwrapped from the task group's group
                failure = exc
            finally:
                with anyio.move_on_after(10, shield=True):
                    await driver.stop()
    finally:
        memory.close()
    if failure is not None:
        raise failure


def _construct(
    case: DriverCase, router: Router, memory: PhysicalMemory, image: Path
) -> BlockDriver:
    cls = load_driver(case.spec)
    try:
        return cls(
            "disk0",
            router,
            memory,
            image,
            logical_sector_size=case.logical_sector_size,
            **case.options,
        )
    except DriverConfigError as exc:
        if case.builtin:
            raise
        pytest.skip(f"{case.spec} does not support this configuration: {exc}")


# ------------------------------------------------------------------ sg builders
def page_sg(frames: Sequence[int]) -> list[Segment]:
    return [Segment(f, PAGE_SIZE) for f in frames]


def scattered_frames(rig: Rig, count: int, seed: int = 7) -> list[int]:
    """``count`` non-adjacent frames, alternating low and high zones, in shuffled order."""
    low = rig.frames(count, Zone.LOW)[::2]
    high = rig.frames(count, Zone.HIGH)[::2]
    mixed = [f for pair in zip(low, high, strict=True) for f in pair]
    random.Random(seed).shuffle(mixed)
    return mixed[:count]


def prp_shaped_sg(rig: Rig, pages: int) -> list[Segment]:
    """Sub-page ends any controller accepts: an offset first piece, whole pages, a short tail."""
    frames = rig.frames(pages + 1, Zone.ANY)
    head = 512
    sg = [Segment(frames[0] + head, PAGE_SIZE - head)]
    sg += page_sg(frames[1:pages])
    sg.append(Segment(frames[pages], head))
    return sg


def arbitrary_subpage_sg(rig: Rig, nbytes: int) -> list[Segment]:
    """512-byte pieces at varying in-page offsets of distinct frames (not PRP-expressible)."""
    pieces = nbytes // 512
    frames = rig.frames(pieces, Zone.LOW)
    return [Segment(f + 512 * ((3 * i + 1) % 8), 512) for i, f in enumerate(frames)]
