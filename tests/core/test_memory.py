"""Physical memory, address spaces, counters and configuration."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microkernel.addrspace import AddressSpace, StitchedAddressSpace, make_address_space
from microkernel.config import ConfigError, load_config
from microkernel.memory import (
    HIGH_BASE,
    LOW_BASE,
    PAGE_SIZE,
    BadAddress,
    OutOfFrames,
    PhysicalMemory,
    QuotaExceeded,
    Zone,
)
from microkernel.stats import Counters
from microkernel.units import parse_size


def test_zones_map_below_and_above_4g() -> None:
    mem = PhysicalMemory(64 * PAGE_SIZE, low_size=16 * PAGE_SIZE)
    low = mem.alloc("t", 16, Zone.LOW)
    high = mem.alloc("t", 48, Zone.HIGH)
    assert all(LOW_BASE <= p < 1 << 32 for p in low)
    assert all(p >= HIGH_BASE for p in high)
    assert mem.frames_free == 0
    with pytest.raises(OutOfFrames) as info:
        mem.alloc("t", 1)
    assert info.value.errno == errno.ENOMEM
    assert mem.release(low + high) == 64
    assert mem.frames_free == 64


def test_any_zone_spares_low_memory_and_quota_holds() -> None:
    mem = PhysicalMemory(32 * PAGE_SIZE, low_size=8 * PAGE_SIZE)
    frames = mem.alloc("user", 24)
    assert all(p >= HIGH_BASE for p in frames)
    mem.set_quota("greedy", 4)
    mem.alloc("greedy", 4, Zone.LOW)
    with pytest.raises(QuotaExceeded):
        mem.alloc("greedy", 1, Zone.LOW)
    assert mem.statistics().low_free == 4


def test_refcounts_free_only_at_zero_and_catch_double_free() -> None:
    mem = PhysicalMemory(16 * PAGE_SIZE)
    (f,) = mem.alloc("t")
    mem.ref(f)
    assert mem.release([f]) == 0
    assert mem.release([f]) == 1
    with pytest.raises(BadAddress):
        mem.release([f])
    with pytest.raises(BadAddress):
        mem.view(12345)


def test_alloc_hands_out_lowest_addresses_first_across_zones() -> None:
    mem = PhysicalMemory(32 * PAGE_SIZE, low_size=8 * PAGE_SIZE)
    frames = mem.alloc("t", 28)  # ANY: the 24 high frames, then low ones
    high = [HIGH_BASE + i * PAGE_SIZE for i in range(24)]
    assert frames == [
        *high,
        LOW_BASE,
        LOW_BASE + PAGE_SIZE,
        LOW_BASE + 2 * PAGE_SIZE,
        LOW_BASE + 3 * PAGE_SIZE,
    ]
    assert all(mem.refcount(f) == 1 for f in frames)
    mem.release(frames[:2])
    assert mem.alloc("u", 3) == [high[1], high[0], LOW_BASE + 4 * PAGE_SIZE]  # a stack: LIFO
    assert mem.statistics().frames_by_owner == {"t": 26, "u": 3}


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 47), unique=True, max_size=20),
    st.integers(1, 64),
)
def test_a_batch_alloc_takes_the_frames_one_at_a_time_would(freed: list[int], take: int) -> None:
    """Frames freed in any order on top of the free runs: one alloc of many hands out
    the same frames, in the same order, with the same owners and refcounts, as
    that many allocs of one (the batch works a run of frame numbers at a time)."""
    batch, single = PhysicalMemory(64 * PAGE_SIZE), PhysicalMemory(64 * PAGE_SIZE)
    for mem in (batch, single):
        held = mem.alloc("boot", 48)
        mem.release([held[i] for i in freed])
    room = 16 + len(freed)
    take = min(take, room)
    got = batch.alloc("t", take)
    assert got == [f for _ in range(take) for f in single.alloc("t", 1)]
    assert all(batch.refcount(f) == 1 and batch.owner_of(f) == "t" for f in got)
    assert batch.frames_of("t") == single.frames_of("t")
    assert batch.statistics() == single.statistics()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 63), st.integers(1, 20), st.booleans()), max_size=8),
    st.lists(st.integers(0, 63), max_size=6),
    st.sampled_from(["a", "b"]),
)
def test_a_run_release_frees_what_one_at_a_time_would(
    spans: list[tuple[int, int, bool]], extra_refs: list[int], charged: str
) -> None:
    """Runs up or down, across the zone hole, with extra references, two owners and
    double frees: a release works a run at a time, with the same frames freed, the
    same free-stack order (what the next allocs hand out), owners and errors."""
    mems = [PhysicalMemory(64 * PAGE_SIZE, low_size=32 * PAGE_SIZE) for _ in range(2)]
    outcomes = []
    for k, mem in enumerate(mems):
        frames = mem.alloc("a", 32, Zone.HIGH) + mem.alloc("a", 32, Zone.LOW)
        mem.charge("b", frames[::5])
        for i in extra_refs:
            mem.ref(frames[i])
        seen: list[object] = []
        for first, count, down in spans:
            chosen = frames[first : first + count]
            chosen = chosen[::-1] if down else chosen
            try:
                seen.append(mem.release(chosen) if k == 0 else mem._release_each(chosen))
            except BadAddress as exc:
                seen.append(str(exc))
        seen.append(mem.statistics())
        seen.append([mem.refcount(f) for f in frames])
        seen.append([mem.owner_of(f) for f in frames])
        seen.append((mem.frames_of("a"), mem.frames_of(charged)))
        seen.append(mem.alloc("c", mem.frames_free - mem.low_reserve) if mem.frames_free else [])
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]


def test_a_view_spans_contiguous_frames_but_never_the_hole_between_zones() -> None:
    mem = PhysicalMemory(32 * PAGE_SIZE, low_size=8 * PAGE_SIZE)
    run = mem.alloc("t", 3, Zone.HIGH)
    mem.view(run[1])[:] = b"y" * PAGE_SIZE
    assert bytes(mem.view(run[0], 3 * PAGE_SIZE))[PAGE_SIZE : 2 * PAGE_SIZE] == b"y" * PAGE_SIZE
    last_low = LOW_BASE + 7 * PAGE_SIZE
    with pytest.raises(BadAddress):  # from the last low frame into the first high one
        mem.view(last_low, HIGH_BASE + PAGE_SIZE - last_low)
    with pytest.raises(BadAddress):  # past the end of the low zone
        mem.view(last_low, 2 * PAGE_SIZE)


def test_copy_is_the_counted_path() -> None:
    counters = Counters()
    mem = PhysicalMemory(16 * PAGE_SIZE, counters=counters)
    a, b = mem.alloc("t", 2)
    mem.view(a)[:] = b"x" * PAGE_SIZE
    mem.copy(mem.view(b), mem.view(a), reason="test")
    assert bytes(mem.view(b)) == b"x" * PAGE_SIZE
    assert counters.bytes_copied == PAGE_SIZE
    assert counters.copies_by_reason["test"] == PAGE_SIZE


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 31), min_size=1, max_size=12))
def test_scattered_frames_appear_contiguous(order: list[int]) -> None:
    mem = PhysicalMemory(32 * PAGE_SIZE, low_size=16 * PAGE_SIZE)
    frames = mem.alloc("t", 32)
    chosen = [frames[i] for i in order]
    for i, p in enumerate(frames):
        mem.view(p)[:] = bytes([i]) * PAGE_SIZE
    space = make_address_space(mem, 64 * PAGE_SIZE)
    try:
        space.map(PAGE_SIZE, chosen, writable=False)
        if isinstance(space, StitchedAddressSpace):
            pytest.skip("MAP_FIXED unavailable: stitched fallback")
        view = space.view(PAGE_SIZE, len(chosen) * PAGE_SIZE)
        assert view.readonly
        expected = b"".join(bytes([i]) * PAGE_SIZE for i in order)
        assert bytes(view) == expected
        assert space.unmap(PAGE_SIZE, len(chosen)) == chosen
        assert not space.is_mapped(PAGE_SIZE, 1)
    finally:
        space.close()
        mem.close()


def test_writes_through_a_mapping_land_in_the_frame() -> None:
    mem = PhysicalMemory(16 * PAGE_SIZE)
    (f,) = mem.alloc("t")
    space = AddressSpace(mem, 16 * PAGE_SIZE)
    space.map(0, [f], writable=True)
    space.view(0, 5, writable=True)[:] = b"hello"
    assert bytes(mem.view(f, 5)) == b"hello"
    with pytest.raises(BadAddress):
        space.view(PAGE_SIZE, 10)
    space.close()


def test_stitched_fallback_refuses_non_contiguous_views() -> None:
    mem = PhysicalMemory(16 * PAGE_SIZE)
    a, _, c = mem.alloc("t", 3)
    space = StitchedAddressSpace(mem, 16 * PAGE_SIZE)
    space.map(0, [a, c], writable=False)
    assert len(space.view(0, PAGE_SIZE)) == PAGE_SIZE
    with pytest.raises(OSError):
        space.view(0, 2 * PAGE_SIZE)


def test_sizes_and_config(tmp_path: Path) -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("1GiB") == 1 << 30
    with pytest.raises(ValueError):
        parse_size("lots")
    cfg_file = tmp_path / "sys.toml"
    cfg_file.write_text(
        'memory = "128M"\nlow_memory = "32M"\n[[devices]]\nimage = "d.img"\ndriver = "ahci"\n'
    )
    cfg = load_config(cfg_file)
    assert cfg.memory_bytes == 128 << 20
    assert cfg.devices[0].name == "ahci0"
    assert cfg.devices[0].image == str(tmp_path / "d.img")
    cfg_file.write_text('memory = "128M"\nbogus = 1\n')
    with pytest.raises(ConfigError, match="bogus"):
        load_config(cfg_file)


def test_read_only_mapping_refuses_writes_at_the_mmu() -> None:
    """A store through a PROT_READ mapping faults (checked in a child process)."""
    code = (
        "import ctypes\n"
        "from microkernel.memory import PhysicalMemory\n"
        "from microkernel.addrspace import AddressSpace\n"
        "mem = PhysicalMemory(16 * 4096)\n"
        "(f,) = mem.alloc('t')\n"
        "space = AddressSpace(mem, 4 * 4096)\n"
        "space.map(0, [f], writable=False)\n"
        "print(bytes(space.view(0, 2)), flush=True)\n"
        "ctypes.memmove(space.base, b'xx', 2)\n"
        "print('wrote', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("b'\\x00\\x00'")
    assert "wrote" not in done.stdout
    assert done.returncode == -signal.SIGSEGV


def _resident_pages(mem: PhysicalMemory) -> int:
    """Pages of the RAM memfd the host has allocated (as the host's fstat counts them)."""
    return os.fstat(mem.fd).st_blocks * 512 // PAGE_SIZE


def test_ram_is_populated_in_the_background_without_changing_a_byte() -> None:
    size = 8 * 2**20
    mem = PhysicalMemory(size, low_size=size // 4, populate=True)
    try:
        frame = mem.alloc("t", 1)[0]
        mem.view(frame)[:5] = b"early"
        assert mem.wait_populated() == size
        assert _resident_pages(mem) == size // PAGE_SIZE
        assert bytes(mem.view(frame)[:5]) == b"early"
    finally:
        mem.close()


def test_ram_is_not_populated_unless_asked_and_close_stops_the_populator() -> None:
    lazy = PhysicalMemory(8 * 2**20)
    assert lazy.wait_populated() == 0 and _resident_pages(lazy) == 0
    lazy.close()
    eager = PhysicalMemory(64 * 2**20, populate=True)
    eager.close()  # at once, mid-population: stops after the chunk in progress
    assert eager.populated() <= 64 * 2**20


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # map (True) or unmap
            st.integers(0, 30),  # first page
            st.integers(1, 10),  # pages
            st.integers(0, 20),  # first frame of the mapping
            st.booleans(),  # frames in one run or every other one
        ),
        max_size=12,
    )
)
def test_a_space_keeps_its_mappings_as_runs_like_a_page_table(
    ops: list[tuple[bool, int, int, int, bool]],
) -> None:
    """Maps over maps, unmaps across runs: the runs answer like a per-page table."""
    mem = PhysicalMemory(64 * PAGE_SIZE)
    frames = mem.alloc("t", 40)
    space = make_address_space(mem, 64 * PAGE_SIZE)
    if space.mode != "map-fixed":
        pytest.skip("MAP_FIXED address spaces are not available here")
    model: dict[int, int] = {}
    try:
        for is_map, first, n, frame, contiguous in ops:
            offsets = [(first + k) * PAGE_SIZE for k in range(n)]
            if is_map:
                chosen = frames[frame : frame + n] if contiguous else frames[frame : frame + 2 * n : 2]
                space.map(offsets[0], chosen, writable=False)
                model.update(zip(offsets, chosen, strict=True))
            else:
                expected = [model.pop(o) for o in offsets if o in model]
                assert space.unmap(offsets[0], n) == expected
            assert space.mapped_frames() == model
            for page in range(0, 44):
                assert space.frame_at(page * PAGE_SIZE + 7) == model.get(page * PAGE_SIZE)
            for o in range(0, 44 * PAGE_SIZE, 5 * PAGE_SIZE):
                want = all(p in model for p in range(o, o + 3 * PAGE_SIZE, PAGE_SIZE))
                assert space.is_mapped(o, 3 * PAGE_SIZE) == want
        for o, phys in model.items():  # the bytes at each offset really are its frame's
            if list(model.values()).count(phys) == 1:
                mem.view(phys, 8)[:] = o.to_bytes(8, "little")
                assert bytes(space.raw_view(o, 8)) == o.to_bytes(8, "little")
    finally:
        space.close()
        mem.close()
