"""A hostile process, from its own port, against every server: the isolation invariants hold.

Invariants after every attack (:meth:`tests.security.adversary.Scene.check`): no
process sees a byte of a file it did not open (no reply carries the secret, no
other file holds it, the victim's mapping and file still read the secret); the
victim's mapping, its frames' owners and reference counts, the cache's pins
and the kernel file driver's frames are as before; every server answers and
none crashed.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from microkernel.errors import CapabilityDenied
from microkernel.ipc import CALL, Envelope
from servers.cache.protocol import CacheFailed, GiveBack, PageRun, Release, SectorsReady
from servers.vfs.protocol import CachePart, Data, Open, OpenFlags, PartReady
from tests.e2e.conftest import ImageFactory
from tests.security.adversary import (
    SECRET,
    Scene,
    Tally,
    attack,
    build,
    message_classes,
    scene,
    sweep_plan,
    targets,
)

pytestmark = pytest.mark.anyio

FILES = {"/secret.txt": SECRET, "/attacker.txt": b"mine" * 3000}


async def finish(sc: Scene, before: object, tally: Tally) -> list[str]:
    await sc.attacker.exit()
    return await sc.check(before, tally)  # type: ignore[arg-type]


async def test_every_message_type_to_every_server(
    make_image: ImageFactory, record_property: Callable[[str, object], None]
) -> None:
    image = make_image(FILES)
    second = make_image({"/other.txt": b"other device"})
    async with scene(image, second) as sc:
        before = sc.snapshot()
        ports = targets(sc.system)
        tally = Tally()
        refusals_before = sc.system.statistics().refusals
        for i, (dst, msg) in enumerate(sweep_plan(sc.live, ports, variants=2)):
            await attack(sc.attacker, dst, msg, tally, call=i % 2 == 0)
        violations = await finish(sc, before, tally)
        refusals = sc.system.statistics().refusals - refusals_before
    types = len(message_classes())
    print(f"\nadversarial sweep: {types} message types x {len(ports)} servers; {tally.line()}; "
          f"router refusals={refusals}; invariant violations={len(violations)}")
    for name, value in (("types", types), ("servers", len(ports)), ("messages", tally.tried),
                        ("refused", tally.refused), ("violations", len(violations))):
        record_property(name, value)
    assert len(tally.pairs) == types * len(ports)
    assert refusals >= tally.refused > 0
    assert violations == []


async def test_forged_sectors_ready_attack(make_image: ImageFactory) -> None:
    """CachePart on its own file plus forged SectorsReady naming the victim's frames."""
    image = make_image(FILES)
    second = make_image({})
    async with scene(image, second) as sc:
        before = sc.snapshot()
        own = await sc.attacker.open("/attacker.txt", "r+b")
        victim_frames = sorted(set(before.victim_frames.values()))
        tally = Tally()

        async def forge() -> None:
            for tag in range(1, 33):
                pages = [PageRun(lba, 1, phys) for lba, phys in zip(sc.live.lbas, victim_frames,
                                                                 strict=False)]
                msg = SectorsReady(tag, sc.live.devices[0], pages)
                await attack(sc.attacker, "vfs", msg, tally, call=tag % 2 == 0)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(forge)
            for position in range(0, 12000, 4096):
                await sc.attacker.syscall(CachePart(own.handle, position, 4096), PartReady)
        mine = set(sc.attacker.kernel.windows[own.handle].mapped_frames().values())
        own_bytes = await own.read()
        own.seek(0)
        await own.write(b"EVIL" * 8)  # through its own window: must not reach the victim
        await own.close()
        violations = await finish(sc, before, tally)
    assert violations == []
    assert not mine & set(victim_frames)
    assert own_bytes == b"mine" * 3000
    assert tally.refused == tally.tried == 32


async def test_pin_attack(make_image: ImageFactory) -> None:
    """Forged GiveBack, CacheFailed, unknown-tag SectorsReady and Release: no pin moves."""
    image = make_image(FILES)
    second = make_image({})
    async with scene(image, second) as sc:
        before = sc.snapshot()
        device = sc.live.devices[0]
        frames = sorted(set(before.victim_frames.values()))
        tally = Tally()
        forged: list[tuple[str, msgspec.Struct]] = [
            ("vfs", SectorsReady(1 << 30, device, [PageRun(lba, 1, f) for lba, f in
                                                  zip(sc.live.lbas, frames, strict=False)])),
            ("vfs", CacheFailed(1, device, 5, "forged")),
            ("vfs", GiveBack(1, 10_000)),
            ("cache", Release(device, sc.live.lbas)),
            ("cache", GiveBack(1, 10_000)),
        ]
        for _ in range(3):
            for dst, msg in forged:
                await attack(sc.attacker, dst, msg, tally, call=False)
                await attack(sc.attacker, dst, msg, tally, call=True)
        violations = await finish(sc, before, tally)
    assert violations == []
    assert tally.refused == tally.tried


@settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def test_random_hostile_messages_keep_the_invariants(
    make_image: ImageFactory, data: st.DataObject
) -> None:
    templates = _templates(make_image)
    classes = message_classes()
    ids = next(_EXAMPLES)
    image, second = (t.with_name(f"example{ids}-{t.name}") for t in templates)
    for template, copy in zip(templates, (image, second), strict=True):
        shutil.copyfile(template, copy)

    async def scenario() -> list[str]:
        async with scene(image, second) as sc:
            before = sc.snapshot()
            ports = targets(sc.system)
            tally = Tally()
            for _ in range(data.draw(st.integers(5, 30), label="messages")):
                dst = data.draw(st.sampled_from(ports), label="to")
                cls = data.draw(st.sampled_from(classes), label="type")

                def pick(pool: object) -> object:
                    return data.draw(st.sampled_from(list(pool)))  # type: ignore[call-overload]

                msg = build(cls, sc.live, pick)
                note(f"{type(msg).__name__} to {dst}: {msg!r}"[:300])
                await attack(sc.attacker, dst, msg, tally, call=data.draw(st.booleans()))
            return await finish(sc, before, tally)

    try:
        assert anyio.run(scenario) == []
    finally:
        image.unlink()
        second.unlink()


_EXAMPLES = itertools.count()
_TEMPLATES: dict[int, tuple[Path, Path]] = {}


def _templates(make_image: ImageFactory) -> tuple[Path, Path]:
    """Two images made once per test (an example copies them: examples must not share state)."""
    key = id(make_image)
    if key not in _TEMPLATES:
        _TEMPLATES.clear()
        _TEMPLATES[key] = (make_image(FILES), make_image({"/other.txt": b"other"}))
    return _TEMPLATES[key]


async def test_forged_replies_to_calls_in_flight(make_image: ImageFactory) -> None:
    """The attacker answers every recent call id while the victim works: nothing it says lands."""
    image = make_image(FILES)
    second = make_image({})
    async with scene(image, second) as sc:
        before = sc.snapshot()
        router = sc.system.router
        endpoint = sc.attacker.kernel.endpoint
        tally = Tally()
        done = anyio.Event()
        stats: list[int] = []

        async def victim_works() -> None:
            for _ in range(40):
                stats.append((await sc.victim.stat("/secret.txt")).size)
                assert await sc.victim.read_file("/secret.txt") == SECRET
            done.set()

        async def forge() -> None:
            while not done.is_set():
                newest = router.next_id()
                for call_id in range(max(1, newest - 64), newest):
                    for src in ("vfs", "fat0", "cache", sc.victim.kernel.port, "kernel"):
                        fake = Envelope(src, "vfs", call_id, 0, 0, CALL, "Stat", b"")
                        tally.tried += 1
                        try:
                            endpoint.reply(fake, Data(SECRET))
                        except CapabilityDenied:
                            tally.refused += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim_works)
            tg.start_soon(forge)
        violations = await finish(sc, before, tally)
    assert violations == []
    assert stats == [len(SECRET)] * 40
    assert tally.refused > 0


async def test_an_open_racing_its_process_exit_leaves_no_window(make_image: ImageFactory) -> None:
    image = make_image(FILES)
    second = make_image({})
    async with scene(image, second) as sc:
        before = sc.snapshot()
        endpoint = sc.attacker.kernel.endpoint
        await endpoint.send("vfs", Open("/attacker.txt", int(OpenFlags.READ)))  # reply unread
        violations = await finish(sc, before, Tally())
    assert violations == []
