"""Controller scatter/gather tables: PRPs, PRDT and PRD rules as pure functions."""

from __future__ import annotations

import errno

import pytest

from drivers.ahci import PRD_MAX_BYTES, build_prdt
from drivers.ide import build_prd
from drivers.nvme import prp_entries, prp_views
from drivers.protocol import Segment
from drivers.sg import merge_adjacent, merge_contiguous, split_at_boundaries
from microkernel.memory import PAGE_SIZE, PhysicalMemory, Zone

P = PAGE_SIZE


def test_prp_first_entry_may_carry_an_offset() -> None:
    sg = [Segment(0x10200, P - 0x200), Segment(0x30000, 2 * P), Segment(0x50000, 0x200)]
    assert prp_entries(sg) == [0x10200, 0x30000, 0x31000, 0x50000]


@pytest.mark.parametrize(
    "sg",
    [
        [Segment(0x10000, P), Segment(0x20200, P)],  # later entry not page aligned
        [Segment(0x10000, 0x200), Segment(0x20000, P)],  # first entry ends inside its page
        [Segment(0x10002, P - 2)],  # not dword aligned
    ],
)
def test_prp_rejects_what_prps_cannot_express(sg: list[Segment]) -> None:
    with pytest.raises(OSError) as info:
        prp_entries(sg)
    assert info.value.errno == errno.EINVAL


def test_prp_views_walk_a_real_list() -> None:
    memory = PhysicalMemory(1 << 20)
    try:
        pages = memory.alloc("t", 8, Zone.LOW)
        for i, page in enumerate(pages):
            memory.view(page)[:] = bytes([i]) * P
        listed = memory.alloc("t", 1, Zone.LOW)[0]

        def walk(first: int, entries: list[int], nbytes: int) -> list[memoryview]:
            memory.view(listed)[: 8 * len(entries)] = b"".join(
                p.to_bytes(8, "little") for p in entries
            )
            return prp_views(memory, first, listed, nbytes)

        # scattered frames: one iovec per physically contiguous run, bytes as the PRPs say
        views = walk(pages[0] + 512, [pages[2], pages[3], pages[6]], 3 * P + 512)
        assert [len(v) for v in views] == [P - 512, 2 * P, 1024]
        expected = bytes([0]) * (P - 512) + bytes([2]) * P + bytes([3]) * P + bytes([6]) * 1024
        assert b"".join(views) == expected
        # consecutive frames: one iovec for the whole transfer
        views = walk(pages[0] + 512, pages[1:4], 3 * P + 512)
        assert [len(v) for v in views] == [3 * P + 512]
        assert bytes(views[0]) == bytes(memory.view(pages[0], 4 * P))[512 : 512 + 3 * P + 512]
        # a list entry outside RAM is a typed error, as for any segment
        with pytest.raises(OSError) as info:
            walk(pages[0], [pages[1], 1 << 40], 3 * P)
        assert info.value.errno == errno.EFAULT
    finally:
        memory.close()


def test_prdt_merges_adjacent_memory_and_caps_entries() -> None:
    sg = [Segment(0x100000, P), Segment(0x101000, P), Segment(0x200000, P)]
    assert build_prdt(sg) == [Segment(0x100000, 2 * P), Segment(0x200000, P)]
    big = [Segment(0x100000, PRD_MAX_BYTES), Segment(0x100000 + PRD_MAX_BYTES, P)]
    assert build_prdt(big) == big
    with pytest.raises(OSError):
        build_prdt([Segment(0x100001, 512)])


def test_prd_splits_at_64k_boundaries_and_stays_below_4g() -> None:
    sg = [Segment(0x1F000, 3 * P)]
    assert build_prd(sg) == [Segment(0x1F000, P), Segment(0x20000, 2 * P)]
    assert all(s.length <= 0x10000 for s in build_prd([Segment(0x100000, 0x30000)]))
    with pytest.raises(OSError):
        build_prd([Segment(1 << 32, P)])


def test_merge_and_split_helpers() -> None:
    sg = [Segment(0, 6), Segment(6, 6), Segment(20, 2)]
    assert merge_adjacent(sg, 8) == [Segment(0, 8), Segment(8, 4), Segment(20, 2)]
    assert list(split_at_boundaries([Segment(6, 12)], 8)) == [
        Segment(6, 2),
        Segment(8, 8),
        Segment(16, 2),
    ]


def test_merge_contiguous_joins_runs_without_a_limit() -> None:
    sg = [Segment(0x10000, P), Segment(0x11000, P), Segment(0x12000, 512), Segment(0x30000, P)]
    assert merge_contiguous(sg) == [Segment(0x10000, 2 * P + 512), Segment(0x30000, P)]
    scattered = [Segment(0x10000, P), Segment(0x30000, P)]
    assert merge_contiguous(scattered) is scattered
    assert merge_contiguous([]) == []
