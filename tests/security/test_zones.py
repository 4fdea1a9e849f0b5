"""Zones: the cache keeps to its share of the low (DMA32) zone; 32-bit controllers bounce high frames."""

from __future__ import annotations

import pytest

import microkernel
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype

pytestmark = pytest.mark.anyio

DRIVERS_32 = ["ahci32", "ide-dma"]
PAYLOAD = bytes(range(251)) * 8192  # about 2 MiB, no page repeats at a page distance


def config(image: str, driver: str, low_share: float) -> SystemConfig:
    return SystemConfig(
        memory="16M",
        low_memory="8M",
        devices=[DeviceConfig(image=image, driver=driver)],
        cache=CacheConfig(low_share=low_share, writeback_interval=None),
    )


@pytest.mark.parametrize("driver", DRIVERS_32)
async def test_a_cache_in_high_memory_is_bounced_and_correct(
    make_image: ImageFactory, driver: str
) -> None:
    image = make_image({"/in.bin": PAYLOAD})
    async with microkernel.boot(config=config(str(image), driver, 0.0)) as system:
        proc = await system.spawn("p")
        assert await proc.read_file("/in.bin") == PAYLOAD
        await proc.write_file("/out.bin", PAYLOAD[::-1])
        async with await proc.open("/out.bin", "rb") as f:
            await f.fsync()
        stats = system.memory.statistics()
        assert stats.low_by_owner.get("cache", 0) == 0  # the cache is all high memory
        assert system.memory.used("cache") > 0
        bounced = system.statistics().dma_bounce_bytes
    assert bounced >= 2 * len(PAYLOAD)  # read in and written out through bounce frames
    assert mtype(image, "/out.bin") == PAYLOAD[::-1]
    fsck_ok(image)


@pytest.mark.parametrize("driver", DRIVERS_32)
async def test_no_process_can_exhaust_the_low_zone(make_image: ImageFactory, driver: str) -> None:
    """Reading and writing several times the memory through a 32-bit controller."""
    image = make_image({"/in.bin": PAYLOAD}, sectors=131072)
    async with microkernel.boot(config=config(str(image), driver, 0.5)) as system:
        mem = system.memory
        share = mem.low_frames // 2
        proc = await system.spawn("p")
        lowest = mem.statistics().low_free
        for i in range(4):
            await proc.write_file(f"/f{i}.bin", PAYLOAD[i:] + PAYLOAD[:i])
            assert await proc.read_file("/in.bin") == PAYLOAD
            stats = mem.statistics()
            lowest = min(lowest, stats.low_free)
            assert stats.low_by_owner.get("cache", 0) <= share
            assert not any(o.startswith("proc") for o in stats.low_by_owner)
        for i in range(4):
            assert await proc.read_file(f"/f{i}.bin") == PAYLOAD[i:] + PAYLOAD[:i]
        assert mem.statistics().low_by_owner.get("cache", 0) <= share
    assert lowest >= mem.low_frames - share - 64  # the rest stays for bounce frames and DMA32
    fsck_ok(image)
