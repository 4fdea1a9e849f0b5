"""The FAT table's free map: in step with the entries, first fit from the hint, no full scans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.fat.fat_table import FREE, FatTable


def _table(fat: int, clusters: int) -> FatTable:
    size = -(-(clusters + 2) * fat // 8)
    size = -(-size // 512) * 512
    return FatTable(bytes(size), fat, clusters + 1, 512)


def _naive_runs(t: FatTable, hint: int) -> list[tuple[int, int]]:
    """Free runs by walking every entry, the way the table did before it kept a map."""
    out: list[tuple[int, int]] = []
    for lo, hi in ((hint, t.max_cluster + 1), (2, hint)):
        c = lo
        while c < hi:
            if t.get(c) != FREE:
                c += 1
                continue
            start = c
            while c < hi and t.get(c) == FREE:
                c += 1
            out.append((start, c - start))
    return out


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 40)),
        st.tuples(st.just("free"), st.integers(0, 30)),
        st.tuples(st.just("grow"), st.integers(1, 10)),
        st.tuples(st.just("hint"), st.integers(0, 400)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(fat=st.sampled_from([12, 16, 32]), ops=OPS)
def test_the_free_map_agrees_with_the_entries(fat: int, ops: list[tuple[str, int]]) -> None:
    t = _table(fat, 300)
    chains: list[list[int]] = []
    for op, n in ops:
        if op == "alloc" and n <= t.free_count:
            chains.append(t.allocate(n))
        elif op == "free" and chains:
            chain = chains.pop(n % len(chains))
            t.free_chain(chain[0])
        elif op == "grow" and chains and n <= t.free_count:
            chain = chains[-1]
            chain.extend(t.allocate(n, after=chain[-1]))
            assert t.chain(chain[0]) == chain
        elif op == "hint":
            t.next_free = n
        assert t.free_count == t.recount_free()
        hint = t.next_free if 2 <= t.next_free <= t.max_cluster else 2
        assert t.free_runs(hint) == _naive_runs(t, hint)
    for chain in chains:
        assert t.chain(chain[0]) == chain


def test_first_fit_starts_at_the_hint_and_wraps() -> None:
    t = _table(16, 100)  # clusters 2..101
    for c in range(2, 102):
        if c not in range(10, 20) and c not in range(60, 63):
            t.set(c, t.eoc)
    t.next_free = 50
    assert t.allocate(3) == [60, 61, 62]  # first fit at or after the hint
    assert t.next_free == 63
    assert t.allocate(4) == [10, 11, 12, 13]  # wrapped to the start
    t.next_free = 15  # a run straddling the hint is found after wrapping
    t.set(15, t.eoc)
    t.set(15, FREE)
    assert t.allocate(6) == [14, 15, 16, 17, 18, 19]


def test_allocation_that_fits_never_lists_every_free_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = _table(32, 200_000)
    for c in range(2, 100_000, 3):  # a fragmented first half
        t.set(c, t.eoc)

    def refuse(hint: int = 2) -> list[tuple[int, int]]:
        raise AssertionError("a fitting allocation walked every free run")

    monkeypatch.setattr(t, "free_runs", refuse)
    for _ in range(200):
        t.allocate(1)
        t.allocate(8)
    assert t.free_count == t.recount_free()


@settings(max_examples=30, deadline=None)
@given(fat=st.sampled_from([12, 16, 32]), raw=st.binary(min_size=1024, max_size=1024))
def test_mount_decodes_every_entry_like_one_by_one(fat: int, raw: bytes) -> None:
    clusters = {12: 600, 16: 400, 32: 200}[fat]
    t = FatTable(raw, fat, clusters + 1, 512)
    assert [t.get(n) for n in range(clusters + 2)] == [t._decode(n) for n in range(clusters + 2)]
    assert t.free_count == t.recount_free()
    assert t.free_runs() == _naive_runs(t, 2)
