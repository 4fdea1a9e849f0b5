"""The block driver conformance suite (docs/architecture.md §2): what every driver must do.

Parametrized by ``pytest_generate_tests`` over ``--driver`` (or all built-ins)
at logical sector sizes 512 and 4096. Every check goes through messages; the
only backdoor is reading the image file, which is what the disk *is*.
Timing is never asserted: latency and hang are observed through call
timeouts, overlap through ``DriverStats.max_in_flight``.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import anyio
import pytest

from drivers.conformance.kit import (
    IMAGE_BYTES,
    DriverCase,
    Rig,
    arbitrary_subpage_sg,
    cases_from_config,
    open_rig,
    page_sg,
    prp_shaped_sg,
    scattered_frames,
)
from drivers.mbr import build_mbr
from drivers.protocol import Flush, Identify, InjectFault, IoDone, Read, Segment, Write
from microkernel.errors import CallTimeout
from microkernel.memory import PAGE_SIZE, Zone
from microkernel.protocol import Ok

pytestmark = pytest.mark.anyio
RANGE_ERRORS = (errno.EINVAL, errno.ERANGE)
SG_ERRORS = (errno.EINVAL, errno.EFAULT)
SHORT = 0.1  # seconds: a call timeout for latency and hang checks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = cases_from_config(metafunc.config)
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _rand(n: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(n)


async def _assert_alive(rig: Rig) -> None:
    """A driver that rejected a request must still answer, and must not have crashed."""
    geometry = await rig.call(Identify(), type(rig.geometry))
    assert geometry == rig.geometry
    assert rig.driver.statistics().crashes == 0


# --------------------------------------------------------------------------- geometry
async def test_identify_geometry(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        g = rig.geometry
        assert g.logical_sector_size == case.logical_sector_size
        assert g.physical_sector_size % g.logical_sector_size == 0
        assert 0 <= g.alignment_offset < g.physical_sector_size // g.logical_sector_size
        assert g.total_sectors == IMAGE_BYTES // g.logical_sector_size
        assert g.dma_bits in (32, 64)
        assert g.max_transfer >= PAGE_SIZE and g.max_transfer % g.logical_sector_size == 0
        assert g.queue_depth >= 1 and g.max_segments >= 1
        assert g.partitions == []


async def test_partitions_from_mbr(case: DriverCase, tmp_path: Path) -> None:
    entries = [(63, 60, 0x0C), (128, 256, 0x83)]  # an old track-aligned 63-sector start too
    contents = bytearray(IMAGE_BYTES)
    contents[:512] = build_mbr(entries)
    async with open_rig(case, tmp_path, contents=bytes(contents)) as rig:
        found = [(p.index, p.start, p.sectors, p.type) for p in rig.geometry.partitions]
        assert found == [(1, 63, 60, 0x0C), (2, 128, 256, 0x83)]


async def test_fat_boot_sector_is_not_a_partition_table(case: DriverCase, tmp_path: Path) -> None:
    boot = bytearray(build_mbr([(1, 10, 0x06)]))  # entry-like bytes inside FAT boot code
    boot[0:3] = b"\xeb\x3c\x90"
    boot[11:13] = (512).to_bytes(2, "little")
    boot[13], boot[14:16], boot[16], boot[21] = 8, (1).to_bytes(2, "little"), 2, 0xF8
    contents = bytes(boot) + bytes(IMAGE_BYTES - 512)
    async with open_rig(case, tmp_path, contents=contents) as rig:
        assert rig.geometry.partitions == []


# ------------------------------------------------------------------------- data path
async def test_read_matches_image(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        sg = page_sg(rig.frames(4, Zone.LOW))
        done = await rig.read(8, sg)
        assert done == IoDone(8, 4 * PAGE_SIZE // rig.lss)
        assert rig.gather(sg) == rig.image_bytes(8, 4 * PAGE_SIZE)
        last = rig.geometry.total_sectors - 1
        tail = [Segment(rig.frames(1, Zone.LOW)[0], rig.lss)]
        await rig.read(last, tail)
        assert rig.gather(tail) == rig.image_bytes(last, rig.lss)


async def test_write_round_trip_and_flush(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        data = _rand(8 * PAGE_SIZE)
        src, dst = page_sg(rig.frames(8, Zone.ANY)), page_sg(rig.frames(8, Zone.ANY))
        rig.scatter(src, data)
        lba = 2 * PAGE_SIZE // rig.lss
        await rig.write(lba, src)
        await rig.read(lba, dst)
        assert rig.gather(dst) == data
        assert await rig.call(Flush(), IoDone) == IoDone(0, 0)
        assert rig.image_bytes(lba, len(data)) == data
        stats = await rig.stats()
        assert stats.write_bytes == len(data) and stats.read_bytes == len(data)
        assert rig.counters().disk_write_bytes == len(data)


async def test_scatter_gather_many_frames(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        g = rig.geometry
        n = min(64, g.max_segments, g.max_transfer // PAGE_SIZE)
        out_sg = page_sg(scattered_frames(rig, n, seed=11))
        in_sg = page_sg(scattered_frames(rig, n, seed=12))
        data = _rand(n * PAGE_SIZE, seed=5)
        rig.scatter(out_sg, data)
        await rig.write(PAGE_SIZE // rig.lss, out_sg)
        await rig.read(PAGE_SIZE // rig.lss, in_sg)
        assert rig.gather(in_sg) == data
        await rig.call(Flush(), IoDone)
        assert rig.image_bytes(PAGE_SIZE // rig.lss, len(data)) == data


async def test_prp_shaped_subpage_segments(case: DriverCase, tmp_path: Path) -> None:
    """An offset first segment and a short last one: expressible by every controller model."""
    async with open_rig(case, tmp_path) as rig:
        sg = prp_shaped_sg(rig, pages=3)
        await rig.read(0, sg)
        assert rig.gather(sg) == rig.image_bytes(0, 3 * PAGE_SIZE)


async def test_arbitrary_subpage_segments(case: DriverCase, tmp_path: Path) -> None:
    """Scattered 512-byte pieces: done correctly, or refused with EINVAL (never wrong data)."""
    async with open_rig(case, tmp_path) as rig:
        sg = arbitrary_subpage_sg(rig, max(rig.lss, 2048))
        data = _rand(sum(s.length for s in sg), seed=9)
        rig.scatter(sg, data)
        try:
            await rig.write(16, sg)
        except OSError as exc:
            assert exc.errno == errno.EINVAL, exc
            assert case.arbitrary_subpage is not True, f"{case.spec} should accept {sg}"
            await _assert_alive(rig)
            return
        assert case.arbitrary_subpage is not False, f"{case.spec} should refuse {sg}"
        rig.scatter(sg, bytes(len(data)))
        await rig.read(16, sg)
        assert rig.gather(sg) == data


# ------------------------------------------------------------------- invalid requests
async def test_out_of_range_is_an_error_reply(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        total = rig.geometry.total_sectors
        frame = rig.frames(1, Zone.LOW)[0]
        one = [Segment(frame, rig.lss)]
        two = [Segment(frame, 2 * rig.lss)] if rig.lss < PAGE_SIZE else page_sg([frame] * 2)
        for lba, count, sg in ((total, 1, one), (total - 1, 2, two), (-1, 1, one), (0, 0, one)):
            with pytest.raises(OSError) as info:
                await rig.call(Read(lba, count, sg), IoDone)
            assert info.value.errno in RANGE_ERRORS, info.value
        await _assert_alive(rig)


async def test_malformed_sg_is_an_error_reply(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        frame = rig.frames(1, Zone.LOW)[0]
        g = rig.geometry
        bad: list[tuple[int, list[Segment]]] = [
            (1, [Segment(frame, rig.lss // 2)]),  # fewer bytes than sectors
            (1, []),  # no segments
            (1, [Segment(0x1000, rig.lss)]),  # not RAM
            (1, [Segment(frame, -rig.lss), Segment(frame, 2 * rig.lss)]),  # negative length
        ]
        too_big = g.max_transfer // rig.lss + 1
        if too_big <= g.total_sectors:  # beyond the maximum transfer, inside the disk
            bad.append((too_big, [Segment(frame, too_big * rig.lss)]))
        for count, sg in bad:
            for msg in (Read(0, count, sg), Write(0, count, sg)):
                with pytest.raises(OSError) as info:
                    await rig.call(msg, IoDone)
                assert info.value.errno in SG_ERRORS, (msg, info.value)
        with pytest.raises(OSError) as info:
            await rig.call(IoDone(0, 0), IoDone)  # a reply is not a request
        assert info.value.errno == errno.EBADMSG
        await _assert_alive(rig)


# --------------------------------------------------------------------- fault injection
async def test_injected_medium_error(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        sg = page_sg(rig.frames(1, Zone.LOW))
        spp = PAGE_SIZE // rig.lss
        await rig.call(InjectFault(fail_ranges=[(spp * 4 + spp - 1, 1)]), Ok)
        rig.scatter(sg, b"\xa5" * PAGE_SIZE)
        for op in (rig.read, rig.write):
            with pytest.raises(OSError) as info:
                await op(spp * 4, sg)
            assert info.value.errno == errno.EIO
        assert rig.gather(sg) == b"\xa5" * PAGE_SIZE  # no silent wrong data in the frame
        assert rig.image_bytes(spp * 4, PAGE_SIZE) != b"\xa5" * PAGE_SIZE
        await rig.read(spp * 5, sg)  # the neighbours still work
        await rig.call(InjectFault(fail_ranges=[(0, 1 << 40)], fail_writes_only=True), Ok)
        await rig.read(0, sg)
        with pytest.raises(OSError) as info:
            await rig.write(0, sg)
        assert info.value.errno == errno.EIO
        await rig.call(InjectFault(), Ok)
        await rig.write(0, sg)


async def test_latency_and_hang_time_out_the_caller(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        sg = page_sg(rig.frames(1, Zone.LOW))
        await rig.call(InjectFault(latency_s=3 * SHORT), Ok)
        with pytest.raises(CallTimeout):
            await rig.read(0, sg, timeout=SHORT)
        await rig.call(InjectFault(hang=True), Ok)
        with pytest.raises(CallTimeout) as info:
            await rig.read(0, sg, timeout=SHORT)
        assert info.value.errno == errno.ETIMEDOUT
        with pytest.raises(CallTimeout):
            await rig.call(Identify(), type(rig.geometry), timeout=SHORT)
        await rig.stats()  # the management channel still answers
        await rig.call(InjectFault(), Ok)
        await rig.read(0, sg)
        await _assert_alive(rig)


# ------------------------------------------------------------------------- concurrency
async def test_commands_overlap_up_to_queue_depth(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        depth = rig.geometry.queue_depth
        n = min(8, max(2, depth))
        frames = rig.frames(n, Zone.LOW)
        await rig.call(InjectFault(latency_s=0.05), Ok)  # keeps commands in the device
        async with anyio.create_task_group() as tg:
            for i, frame in enumerate(frames):
                tg.start_soon(rig.read, i * PAGE_SIZE // rig.lss, [Segment(frame, PAGE_SIZE)])
        stats = await rig.stats()
        assert 1 <= stats.max_in_flight <= depth
        if depth > 1:
            assert stats.max_in_flight > 1, "a deep-queue driver must overlap commands"
        for i, frame in enumerate(frames):
            assert rig.gather([Segment(frame, PAGE_SIZE)]) == rig.image_bytes(
                i * PAGE_SIZE // rig.lss, PAGE_SIZE
            )


# ---------------------------------------------------------------------------- counters
async def test_partial_sector_writes_are_counted(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        g = rig.geometry
        spp = g.physical_sector_size // g.logical_sector_size
        frame = rig.frames(1, Zone.LOW)[0]
        await rig.write(g.alignment_offset, [Segment(frame, PAGE_SIZE)])
        assert (await rig.stats()).partial_sector_writes == 0
        assert rig.counters().partial_sector_writes == 0
        await rig.write(g.alignment_offset + 1, [Segment(frame, rig.lss)])
        expected = 1 if spp > 1 else 0
        assert (await rig.stats()).partial_sector_writes == expected
        assert rig.counters().partial_sector_writes == expected


async def test_copies_only_for_bounce_or_pio(case: DriverCase, tmp_path: Path) -> None:
    """Low frames: zero copies unless PIO. High frames: bounce exactly when DMA is 32-bit."""
    async with open_rig(case, tmp_path) as rig:
        low = page_sg(rig.frames(2, Zone.LOW))
        await rig.read(0, low)
        before, stats_before = rig.counters(), await rig.stats()
        assert stats_before.bounce_bytes == 0 == before.dma_bounce_bytes
        assert before.bytes_copied == stats_before.pio_bytes
        high = page_sg(rig.frames(2, Zone.HIGH))
        rig.scatter(high, _rand(2 * PAGE_SIZE))
        await rig.write(0, high)
        await rig.read(0, high)
        delta, stats = rig.counters().delta(before), await rig.stats()
        bounced = 4 * PAGE_SIZE if rig.geometry.dma_bits == 32 else 0
        assert delta.dma_bounce_bytes == bounced == stats.bounce_bytes
        pio = stats.pio_bytes - stats_before.pio_bytes
        assert delta.bytes_copied == bounced + pio
        await rig.call(Flush(), IoDone)
        assert rig.gather(high) == rig.image_bytes(0, 2 * PAGE_SIZE)


async def test_pio_copies_equal_bytes_moved(case: DriverCase, tmp_path: Path) -> None:
    async with open_rig(case, tmp_path) as rig:
        sg = page_sg(rig.frames(3, Zone.ANY))
        await rig.write(0, sg)
        await rig.read(0, sg)
        stats = await rig.stats()
        pio_copies = rig.counters().copies_by_reason.get("pio", 0)
    if case.pio is not None:
        assert (stats.pio_bytes > 0) == case.pio, f"{case.id}: PIO expected {case.pio}"
    if stats.pio_bytes:
        assert stats.pio_bytes == 6 * PAGE_SIZE == pio_copies
    else:
        assert pio_copies == 0


def exported() -> dict[str, object]:
    """What a test module needs to re-export to run this suite (see tests/drivers)."""
    names = [n for n in globals() if n.startswith("test_")]
    return {
        n: globals()[n] for n in [*names, "pytest_generate_tests", "anyio_backend", "pytestmark"]
    }


__all__ = ["exported"]
