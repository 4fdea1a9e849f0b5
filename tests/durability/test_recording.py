"""The recording block device and its replay: the log rebuilds the disk, prefixes and crash states."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import microkernel
from drivers.ramdisk import RamDisk
from drivers.recording import (
    TORN_UNIT,
    LogEntry,
    Recorder,
    RecordingRamDisk,
    WriteLog,
    crash_states,
    epochs,
    image_after,
    recording,
)
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume

pytestmark = pytest.mark.anyio


def _log() -> WriteLog:
    log = WriteLog(base=bytes(4 * TORN_UNIT))
    log.write(0, b"a" * 512)
    log.write(TORN_UNIT, b"b" * (2 * TORN_UNIT))
    log.flush()
    log.write(512, b"c" * 512)
    log.write(3 * TORN_UNIT, b"d" * TORN_UNIT)
    return log


def test_image_after_each_prefix_applies_writes_in_log_order() -> None:
    log = _log()
    assert image_after(log, 0) == log.base
    one = image_after(log, 1)
    assert one[:512] == b"a" * 512 and one[512:] == bytes(len(one) - 512)
    full = image_after(log, len(log.entries))
    assert full[:1024] == b"a" * 512 + b"c" * 512
    assert full[TORN_UNIT:3 * TORN_UNIT] == b"b" * 2 * TORN_UNIT
    assert full[3 * TORN_UNIT:] == b"d" * TORN_UNIT
    assert epochs(log) == [(0, 2), (3, 5)]


def test_crash_states_cover_every_prefix_and_stay_inside_one_epoch() -> None:
    log = _log()
    states = list(crash_states(log, random.Random(7), samples=20))
    prefixes = [s.durable for s in states if s.kind == "prefix"]
    assert prefixes == [0, 1, 2, 4, 5]  # a cut right after the flush equals the one before it
    sampled = [s for s in states if s.kind != "prefix"]
    assert len(sampled) == 40 and {s.kind for s in sampled} == {"reorder", "torn"}
    for s in sampled:
        window = range(s.durable, s.window_end)
        assert s.durable in (0, 3) and all(i in window for i, _ in s.extra)
        for i, pieces in s.extra:
            if pieces is not None:  # a torn write keeps some, not all, of its 4 KiB pieces
                count = -(-len(log.entries[i].data or b"") // TORN_UNIT)
                assert 0 < len(pieces) < count
    again = list(crash_states(log, random.Random(7), samples=20))
    assert again == states  # the seed decides the sample


def test_a_torn_write_keeps_only_its_chosen_pieces() -> None:
    log = _log()
    state = next(s for s in crash_states(log, random.Random(1), samples=50) if s.kind == "torn")
    image = state.build(log)
    (index, pieces) = next((i, p) for i, p in state.extra if p is not None)
    entry = log.entries[index]
    assert isinstance(entry, LogEntry) and entry.data is not None
    for p in range(len(entry.data) // TORN_UNIT):
        at = entry.offset + p * TORN_UNIT
        expect = entry.data[:1] if p in (pieces or ()) else b"\0"
        assert image[at:at + 1] == expect


async def test_recording_ramdisk_logs_a_whole_system_run(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=16 * 2**20, fat=16)
    async with microkernel.boot(image=image, driver="drivers.recording:RecordingRamDisk",
                                memory="32M") as system:
        drv = system.server("recordingramdisk0")
        assert isinstance(drv, Recorder) and isinstance(drv, RecordingRamDisk)
        proc = await system.spawn("p")
        async with await proc.open("/hello.txt", "wb") as f:
            await f.write(b"logged " * 1000)
            await f.fsync()
        log = drv.write_log
        assert log.writes > 0 and any(e.is_flush for e in log.entries)
        device = os.pread(drv.fd, drv.total_sectors * 512, 0)
        assert image_after(log, len(log.entries)) == device  # the log is the whole story
    assert image.read_bytes() == log.base  # a ramdisk never writes its image back
    replayed = tmp_path / "replayed.img"
    replayed.write_bytes(image_after(log, len(log.entries)))
    io = FileSectorIO(replayed, read_only=True)
    try:
        vol = await FatVolume.mount(io, read_only=True)
        assert await vol.read("/hello.txt") == b"logged " * 1000
    finally:
        io.close()


def test_recording_wraps_any_driver_class() -> None:
    cls = recording(RamDisk)
    assert issubclass(cls, RamDisk) and cls.__name__ == "RecordingRamDisk"
    assert cls.model == "recording ramdisk"
