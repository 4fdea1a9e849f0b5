"""Unit and property tests of the pure FAT layout core (no I/O, no awaits)."""

from __future__ import annotations

import errno
import itertools
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.fat.bpb import BootSector, fat_type_for, pack_boot_sector, parse_boot_sector
from servers.fat.dirent import (
    DELETED_MARK,
    ShortEntry,
    decode_datetime,
    encode_datetime,
    find_free_run,
    parse_directory,
)
from servers.fat.errors import BadBootSector, BadChain, CorruptVolume, FatError, NoSpace
from servers.fat.fat_table import FatTable
from servers.fat.names import (
    encode_lfn,
    exact_short_name,
    generate_short_name,
    lfn_checksum,
    lfn_fragment,
    validate_long_name,
)

PROPS = settings(max_examples=40, deadline=None)


def _table(fat: int, clusters: int = 300) -> FatTable:
    size = -(-(clusters + 2) * fat // 8)
    size = -(-size // 512) * 512
    return FatTable(bytes(size), fat, clusters + 1, 512)


# -- FAT type rule and BPB --------------------------------------------------------
def test_fat_type_boundaries() -> None:
    assert [fat_type_for(n) for n in (1, 4084, 4085, 65524, 65525)] == [12, 12, 16, 16, 32]


def _bs(**kw: int) -> BootSector:
    base = dict(bytes_per_sector=512, sectors_per_cluster=4, reserved_sectors=1, num_fats=2,
                root_entries=512, total_sectors=20000, media=0xF8, fat_size=20)
    base.update(kw)
    return BootSector(**base)  # type: ignore[arg-type]


def test_boot_sector_round_trip() -> None:
    bs = _bs()
    parsed = parse_boot_sector(pack_boot_sector(bs))
    assert parsed.fat_type == 16
    assert parsed.cluster_count == bs.cluster_count
    assert parsed.data_start == 1 + 40 + 32


_FIELDS = {"bytes_per_sector": (11, 2), "sectors_per_cluster": (13, 1),
           "reserved_sectors": (14, 2), "num_fats": (16, 1), "root_entries": (17, 2),
           "fat_size": (22, 2)}


@pytest.mark.parametrize(("field", "value", "words"), [
    ("bytes_per_sector", 1000, "bytes per sector"),
    ("bytes_per_sector", 8192, "bytes per sector"),
    ("sectors_per_cluster", 3, "sectors per cluster"),
    ("sectors_per_cluster", 0, "sectors per cluster"),
    ("reserved_sectors", 0, "reserved"),
    ("num_fats", 0, "FAT count"),
    ("num_fats", 3, "FAT count"),
    ("root_entries", 0, "root directory"),
    ("fat_size", 1, "cannot map"),
])
def test_bad_bpb_fields_refused(field: str, value: int, words: str) -> None:
    at, width = _FIELDS[field]
    raw = pack_boot_sector(_bs())
    raw = raw[:at] + value.to_bytes(width, "little") + raw[at + width:]
    with pytest.raises(BadBootSector, match=words) as info:
        parse_boot_sector(raw)
    assert info.value.errno == errno.EIO
    assert isinstance(info.value, CorruptVolume | FatError | OSError)


def test_cluster_over_64k_refused() -> None:
    raw = pack_boot_sector(_bs(bytes_per_sector=4096, sectors_per_cluster=32, total_sectors=9000,
                               fat_size=4, root_entries=128))
    with pytest.raises(BadBootSector, match="64 KiB"):
        parse_boot_sector(raw)


def test_missing_signature_and_truncation() -> None:
    raw = pack_boot_sector(_bs())
    with pytest.raises(BadBootSector, match="0x55AA"):
        parse_boot_sector(raw[:510] + b"\0\0")
    with pytest.raises(BadBootSector, match="truncated"):
        parse_boot_sector(raw, device_bytes=20000 * 512 - 1)


# -- FAT entries ---------------------------------------------------------------------
@PROPS
@given(st.sampled_from([12, 16, 32]),
       st.dictionaries(st.integers(2, 301), st.integers(0, 0x0FFFFFFF), max_size=60))
def test_fat_entries_round_trip(fat: int, values: dict[int, int]) -> None:
    t = _table(fat)
    mask = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}[fat]
    for n, v in values.items():
        t.set(n, v)
    again = FatTable(t.raw, fat, t.max_cluster, 512)
    for n in range(2, 302):
        assert again.get(n) == values.get(n, 0) & mask
    assert again.free_count == t.free_count == sum(1 for n in range(2, 302)
                                                   if values.get(n, 0) & mask == 0)


def test_fat12_packing_bytes() -> None:
    t = _table(12)
    t.set(2, 0xABC)
    t.set(3, 0x123)
    assert t.raw[3:6] == bytes([0xBC, 0x3A, 0x12])


def test_fat32_preserves_upper_bits() -> None:
    raw = bytearray(1024)
    raw[4 * 5:4 * 5 + 4] = (0xA0000000).to_bytes(4, "little")
    t = FatTable(bytes(raw), 32, 200, 512)
    assert t.get(5) == 0
    t.set(5, 0x0FFFFFFF)
    assert int.from_bytes(t.raw[20:24], "little") == 0xAFFFFFFF


def test_dirty_sectors_tracked_per_sector() -> None:
    t = FatTable(bytes(4096), 12, 2000, 512)
    t.set(341, 7)  # FAT12 entry 341 straddles sectors 0 and 1 (byte 511..512)
    assert [first for first, _ in t.dirty_runs()] == [0]
    assert len(t.dirty_runs()[0][1]) == 1024


@pytest.mark.parametrize("fat", [12, 16, 32])
def test_chain_errors_are_typed_and_bounded(fat: int) -> None:
    t = _table(fat)
    t.set(2, 3)
    t.set(3, 2)  # cycle
    with pytest.raises(BadChain, match="cyclic"):
        t.chain(2)
    t.set(3, 0)
    with pytest.raises(BadChain, match="free"):
        t.chain(2)
    t.set(3, 1)
    with pytest.raises(BadChain, match="reserved"):
        t.chain(2)
    t.set(3, 5000)
    with pytest.raises(BadChain, match="out-of-range"):
        t.chain(2)
    with pytest.raises(BadChain, match="outside"):
        t.chain(10_000)
    t.set(3, t.bad)
    with pytest.raises(BadChain, match="bad cluster"):
        t.chain(2)


def _reference_chain(t: FatTable, start: int, limit: int | None) -> list[int] | str:
    """The chain walked one cluster at a time (the obvious loop), or the error's text."""
    out, seen, cur = [start], {start}, start
    bound = t.max_cluster if limit is None else min(limit, t.max_cluster)
    while len(out) < bound:
        nxt = t.get(cur)
        if nxt >= t.eoc_min:
            return out
        if nxt == 0 or nxt == t.bad or not 2 <= nxt <= t.max_cluster or nxt in seen:
            return "bad"
        seen.add(nxt)
        out.append(nxt)
        cur = nxt
    return out


@PROPS
@given(
    fat=st.sampled_from([12, 16, 32]),
    stretches=st.lists(st.tuples(st.integers(2, 120), st.integers(1, 40)), min_size=1,
                       max_size=6),
    ending=st.sampled_from(["eoc", "free", "bad", "loop", "range"]),
    limit=st.none() | st.integers(1, 200),
)
def test_chain_runs_walk_like_one_cluster_at_a_time(
    fat: int, stretches: list[tuple[int, int]], ending: str, limit: int | None
) -> None:
    """Contiguous stretches linked in any order (overlapping ones make cycles): the
    run walk gives the per-cluster walk's clusters, or fails where it fails."""
    t = _table(fat, 200)
    order: list[int] = []
    for first, n in stretches:
        order.extend(range(first, first + n))
    for a, b in itertools.pairwise(order):
        t.set(a, b)
    last = order[-1]
    t.set(last, {"eoc": t.eoc, "free": 0, "bad": t.bad, "loop": order[0],
                 "range": t.max_cluster + 1 if fat != 12 else 1}[ending])
    start = order[0]
    expected = _reference_chain(t, start, limit)
    if expected == "bad":
        with pytest.raises(BadChain):
            t.chain(start, limit)
        return
    assert t.chain(start, limit) == expected
    assert t.chain_runs(start, limit) == t.runs(expected)


def test_allocation_prefers_contiguous_runs() -> None:
    t = _table(16, 100)
    t.set(5, t.eoc)  # free: 2..4, 6..101
    assert t.allocate(4) == [6, 7, 8, 9]
    assert t.chain(6) == [6, 7, 8, 9]
    grown = t.allocate(2, after=9)
    assert grown == [10, 11]
    assert t.chain(6) == [6, 7, 8, 9, 10, 11]


def test_allocation_falls_back_to_fragments_and_nospace() -> None:
    t = _table(16, 10)  # clusters 2..11
    for c in (4, 7, 10):
        t.set(c, t.eoc)
    free = t.free_count
    got = t.allocate(free)
    assert sorted(got) == [2, 3, 5, 6, 8, 9, 11]
    assert t.free_count == 0
    with pytest.raises(NoSpace) as info:
        t.allocate(1)
    assert info.value.errno == errno.ENOSPC


@PROPS
@given(st.lists(st.integers(1, 20), min_size=1, max_size=15))
def test_free_count_exact_under_alloc_and_free(sizes: list[int]) -> None:
    t = _table(32, 200)
    chains = []
    for n in sizes:
        if n <= t.free_count:
            chains.append(t.allocate(n))
    for c in chains[::2]:
        t.free_chain(c[0])
    assert t.free_count == t.recount_free()
    for c in chains[1::2]:
        assert t.chain(c[0]) == c


# -- names -----------------------------------------------------------------------------
long_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters='"*/:<>?\\|',
                           exclude_categories=("Cs", "Cc")),
    min_size=1, max_size=80,
).filter(lambda s: s not in (".", "..") and s[-1] not in ". ")


@PROPS
@given(long_names, st.binary(min_size=11, max_size=11))
def test_lfn_round_trip(name: str, short: bytes) -> None:
    validate_long_name(name)
    checksum = lfn_checksum(short)
    entries = encode_lfn(name, checksum)
    assert entries[0][0] & 0x40
    frags = [lfn_fragment(e) for e in reversed(entries)]
    assert [f[0] for f in frags] == list(range(1, len(entries) + 1))
    assert all(f[1] == checksum for f in frags)
    assert b"".join(f[2] for f in frags).decode("utf-16-le") == name
    directory = b"".join(entries) + ShortEntry(short if short[0] not in (0, 0xE5) else
                                               b"A" + short[1:]).pack()
    if short[0] in (0, 0xE5):
        entries = encode_lfn(name, lfn_checksum(b"A" + short[1:]))
        directory = b"".join(entries) + directory[-32:]
    listing = parse_directory(directory + bytes(32))
    assert [s.long_name for s in listing.slots] == [name]


def test_lfn_padding() -> None:
    (entry,) = encode_lfn("abc", 0)
    units = entry[1:11] + entry[14:26] + entry[28:32]
    assert units[6:8] == b"\0\0" and set(units[8:]) == {0xFF}
    (full,) = encode_lfn("a" * 13, 0)
    assert b"\xff" not in full[1:11]


def test_lfn_checksum_known_value() -> None:
    # Computed by hand from the rotate-right-and-add rule for "FOO     BAR".
    total = 0
    for b in b"FOO     BAR":
        total = ((total >> 1) | ((total & 1) << 7)) + b & 0xFF
    assert lfn_checksum(b"FOO     BAR") == total


@pytest.mark.parametrize(("name", "expected"), [
    ("README.TXT", (b"README  TXT", 0)),
    ("readme.txt", (b"README  TXT", 0x18)),
    ("readme.TXT", (b"README  TXT", 0x08)),
    ("Readme.txt", None),
    ("a.b.c", None),
    ("toolongname.txt", None),
    ("space name", None),
    ("café", None),
])
def test_exact_short_name(name: str, expected: tuple[bytes, int] | None) -> None:
    assert exact_short_name(name) == expected


@PROPS
@given(st.lists(long_names, min_size=1, max_size=40))
def test_generated_short_names_unique_and_valid(names: list[str]) -> None:
    taken: set[bytes] = set()
    for name in names:
        short = generate_short_name(name, taken.__contains__)
        assert short not in taken and len(short) == 11
        assert b"~" in short and short[0] not in (0x00, 0x20, 0xE5)
        assert exact_short_name(short.decode("cp850").replace(" ", "")) is None or True
        taken.add(short)


def test_basis_name_windows_like() -> None:
    taken: set[bytes] = set()
    assert generate_short_name("My Document.text", taken.__contains__) == b"MYDOCU~1TEX"
    taken.add(b"MYDOCU~1TEX")
    assert generate_short_name("My Document.text", taken.__contains__) == b"MYDOCU~2TEX"
    assert generate_short_name(".bashrc", set().__contains__) == b"BASHRC~1   "
    assert generate_short_name("a+b.c", set().__contains__) == b"A_B~1   C  "


@pytest.mark.parametrize(("name", "err"), [
    ("a/b", errno.EINVAL), ("what?", errno.EINVAL), ("", errno.EINVAL), ("..", errno.EINVAL),
    ("trailing.", errno.EINVAL), ("x" * 256, errno.ENAMETOOLONG), ("tab\there", errno.EINVAL),
])
def test_invalid_names(name: str, err: int) -> None:
    with pytest.raises(FatError) as info:
        validate_long_name(name)
    assert info.value.errno == err


# -- timestamps and directories --------------------------------------------------------------
@PROPS
@given(st.datetimes(min_value=datetime(1980, 1, 1), max_value=datetime(2107, 12, 31, 23, 59, 58)))
def test_timestamps_round_trip(dt: datetime) -> None:
    date, tm, cs = encode_datetime(dt)
    back = decode_datetime(date, tm, cs)
    assert back == dt.replace(microsecond=dt.microsecond // 10000 * 10000)
    assert 0 <= cs < 200


def test_timestamp_clamped_and_invalid() -> None:
    assert decode_datetime(*encode_datetime(datetime(1970, 5, 5))) == datetime(1980, 1, 1)
    assert decode_datetime(0, 0) is None  # month 0


def test_orphan_lfn_and_bad_checksum_tolerated() -> None:
    short = ShortEntry(b"LONGNA~1TXT")
    good = encode_lfn("a long file name.txt", lfn_checksum(short.name))
    bad = encode_lfn("a long file name.txt", lfn_checksum(short.name) ^ 1)
    listing = parse_directory(b"".join(bad) + short.pack() + bytes(32))
    assert listing.slots[0].long_name is None and listing.slots[0].name == "LONGNA~1.TXT"
    assert listing.bad_checksum == 1
    orphan = good[1:]  # the 0x40 (last) entry is missing
    listing = parse_directory(b"".join(orphan) + short.pack() + bytes(32))
    assert listing.slots[0].long_name is None and listing.orphan_lfn >= 1


def test_find_free_run() -> None:
    used = ShortEntry(b"A          ").pack()
    deleted = bytes([DELETED_MARK]) + used[1:]
    data = used + deleted + deleted + used + deleted + bytes(32 * 3)
    listing = parse_directory(data)
    assert listing.end == 5
    assert find_free_run(data, 2, listing.end) == 1
    assert find_free_run(data, 3, listing.end) == 4
    assert find_free_run(data, 5, listing.end) is None
