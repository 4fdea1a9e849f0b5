"""Memory quotas per owner: every frame has an owner; a process's quota bounds it alone."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microkernel.config import ConfigError, SystemConfig, load_config
from microkernel.memory import PAGE_SIZE, OutOfFrames, PhysicalMemory, QuotaExceeded, Zone


def memory(frames: int = 64, low: int = 16) -> PhysicalMemory:
    return PhysicalMemory(frames * PAGE_SIZE, low_size=low * PAGE_SIZE)


def test_exhausting_a_quota_is_enomem_for_that_owner_alone() -> None:
    mem = memory()
    mem.set_quota("proc:1", 8)
    mine = mem.alloc("proc:1", 8)
    with pytest.raises(QuotaExceeded) as info:
        mem.alloc("proc:1", 1)
    assert info.value.errno == errno.ENOMEM
    assert mem.used("proc:1") == 8
    assert len(mem.alloc("proc:2", 8)) == 8  # another process is not affected
    assert len(mem.alloc("vfs", 8)) == 8
    mem.release(mine[:2])
    assert len(mem.alloc("proc:1", 2)) == 2  # room again after freeing


def test_charge_moves_frames_to_a_process_all_or_nothing() -> None:
    mem = memory()
    mem.set_quota("proc:1", 4)
    frames = mem.alloc("vfs", 6)
    mem.charge("proc:1", frames[:3])
    assert (mem.used("vfs"), mem.used("proc:1")) == (3, 3)
    assert all(mem.owner_of(f) == "proc:1" for f in frames[:3])
    with pytest.raises(QuotaExceeded):
        mem.charge("proc:1", frames[3:])  # 3 more would make 6 > 4
    assert (mem.used("vfs"), mem.used("proc:1")) == (3, 3)
    assert all(mem.owner_of(f) == "vfs" for f in frames[3:])
    mem.charge("proc:1", frames[:3])  # already its own: costs nothing
    assert mem.used("proc:1") == 3


def test_everything_an_owner_held_returns_when_it_goes() -> None:
    mem = memory()
    free = mem.frames_free
    mem.set_quota("proc:7", 32)
    frames = mem.alloc("proc:7", 5) + mem.alloc("vfs", 3)
    mem.charge("proc:7", frames[5:])
    mem.ref(frames[0])  # a second reference (a mapping the exit already tore down)
    assert sorted(mem.frames_of("proc:7")) == sorted(frames)
    assert mem.forget_owner("proc:7") == 8
    assert mem.frames_free == free
    assert mem.frames_of("proc:7") == []
    assert mem.quota("proc:7") is None
    assert "proc:7" not in mem.statistics().frames_by_owner


def test_a_low_share_keeps_the_low_zone_for_dma32() -> None:
    mem = memory(frames=64, low=16)
    mem.set_quota("cache", None, low=8)
    got = mem.alloc("cache", 8, Zone.PREFER_LOW)
    assert all(p < 1 << 32 for p in got)
    spill = mem.alloc("cache", 4, Zone.PREFER_LOW)  # the share is used: high frames now
    assert all(p >= 1 << 32 for p in spill)
    with pytest.raises(QuotaExceeded):
        mem.alloc("cache", 1, Zone.LOW)
    mem.alloc("cache", 44, Zone.ANY)  # all high
    with pytest.raises(QuotaExceeded):  # only low frames remain, and they are not its share
        mem.alloc("cache", 1, Zone.ANY)
    assert mem.statistics().low_free == 8
    assert mem.statistics().low_by_owner == {"cache": 8}
    assert len(mem.alloc("ahci0", 8, Zone.LOW)) == 8  # a driver's bounce frames still fit
    with pytest.raises(OutOfFrames):
        mem.alloc("ahci0", 1, Zone.LOW)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alloc", "charge", "release", "forget"]),
            st.sampled_from(["proc:1", "proc:2", "vfs", "cache"]),
            st.integers(1, 6),
            st.sampled_from(list(Zone)),
        ),
        max_size=40,
    )
)
def test_owner_accounting_always_adds_up(ops: list[tuple[str, str, int, Zone]]) -> None:
    mem = memory(frames=48, low=16)
    mem.set_quota("proc:1", 10, low=2)
    mem.set_quota("proc:2", 6)
    mem.set_quota("cache", None, low=8)
    held: list[int] = []
    for op, owner, n, zone in ops:
        try:
            if op == "alloc":
                held += mem.alloc(owner, n, zone)
            elif op == "charge":
                mem.charge(owner, held[:n])
            elif op == "release" and held:
                mem.release([held.pop()])
            elif op == "forget":
                mem.release_owner(owner)
                held = [p for p in held if mem.refcount(p) > 0]
        except (QuotaExceeded, OutOfFrames) as exc:
            assert exc.errno == errno.ENOMEM
        stats = mem.statistics()
        assert sum(stats.frames_by_owner.values()) == mem.frames_total - mem.frames_free
        for who in ("proc:1", "proc:2", "vfs", "cache"):
            frames = mem.frames_of(who)
            assert len(frames) == mem.used(who)
            assert all(mem.owner_of(p) == who for p in frames)
            assert sum(1 for p in frames if p < 1 << 32) == stats.low_by_owner.get(who, 0)
        assert mem.used("proc:1") <= 10 and mem.used("proc:2") <= 6
        assert stats.low_by_owner.get("proc:1", 0) <= 2
        assert stats.low_by_owner.get("cache", 0) <= 8


def test_quota_and_low_share_come_from_the_boot_toml(tmp_path: Path) -> None:
    toml = tmp_path / "system.toml"
    toml.write_text('memory = "16M"\nprocess_memory = "1M"\n[cache]\nlow_share = 0.25\n')
    cfg = load_config(toml)
    assert (cfg.process_quota_frames, cfg.cache.low_share) == (256, 0.25)
    assert load_config_text(tmp_path, 'memory = "16M"\n').process_quota_frames == 1024
    for bad in ('[cache]\nlow_share = 1.5\n', 'process_memory = "1K"\n'):
        with pytest.raises(ConfigError):
            load_config_text(tmp_path, bad)


def load_config_text(tmp_path: Path, text: str) -> SystemConfig:
    toml = tmp_path / "other.toml"
    toml.write_text(text)
    return load_config(toml)


def test_the_dma32_reserve_is_only_for_explicit_low_requests() -> None:
    mem = PhysicalMemory(64 * PAGE_SIZE, low_size=16 * PAGE_SIZE, low_reserve=4)
    mem.alloc("vfs", 48 + 12, Zone.ANY)  # all high, then the low zone down to the reserve
    with pytest.raises(OutOfFrames):
        mem.alloc("vfs", 1, Zone.ANY)
    with pytest.raises(OutOfFrames):
        mem.alloc("cache", 1, Zone.PREFER_LOW)
    assert len(mem.alloc("ahci0", 4, Zone.LOW)) == 4  # a driver's bounce frames
