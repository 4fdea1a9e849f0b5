"""The corrupted-image corpus: each row of servers.fat.damage.DAMAGE_TABLE, built from a clean
image by these tests, gives its defined, typed behaviour and never hangs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from servers.fat.bpb import BootSector, parse_boot_sector, parse_fsinfo
from servers.fat.damage import DAMAGE_TABLE
from servers.fat.errors import BadBootSector, BadChain, DirectoryLoop, TruncatedImage
from servers.fat.fat_table import FatTable
from servers.fat.mkfs import make_filesystem
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.fat.helpers import mounted
from tests.oracles import fsck_fat, require_tool

pytestmark = pytest.mark.anyio
FATS = [12, 16, 32]
_MKFS = {12: {"size": 4 << 20}, 16: {"size": 32 << 20},
         32: {"size": 40 << 20, "cluster_size": 512}}
# Which test exercises each row of DAMAGE_TABLE.
COVERAGE = {
    "cyclic_chain": "test_chain_damage_gives_eio",
    "chain_into_free": "test_chain_damage_gives_eio",
    "chain_into_reserved": "test_chain_damage_gives_eio",
    "chain_shorter_than_size": "test_chain_shorter_than_size_is_clipped",
    "start_beyond_volume": "test_start_cluster_beyond_volume",
    "cross_linked": "test_cross_linked_files",
    "directory_loop": "test_directory_loop",
    "bad_bytes_per_sector": "test_refused_at_mount",
    "bad_sectors_per_cluster": "test_refused_at_mount",
    "zero_fat_count": "test_refused_at_mount",
    "zero_reserved_sectors": "test_refused_at_mount",
    "missing_signature": "test_refused_at_mount",
    "truncated_image": "test_truncated_image_refused",
    "differing_fat_copies": "test_differing_fat_copies_repaired",
    "wrong_fsinfo_free_count": "test_wrong_fsinfo_free_count",
    "dirty_flag_set": "test_dirty_flag_tolerated_and_cleared",
    "orphan_lfn": "test_orphan_lfn_and_bad_checksum",
    "bad_lfn_checksum": "test_orphan_lfn_and_bad_checksum",
}


async def clean_image(tmp: Path, fat: int) -> tuple[Path, dict[str, int]]:
    """A clean volume; returns it and the first cluster of each file/directory."""
    image = tmp / f"clean{fat}.img"
    make_filesystem(image, fat=fat, **_MKFS[fat])  # type: ignore[arg-type]
    async with mounted(image) as vol:
        cs = vol.boot.cluster_size
        await vol.mkdir("/d")
        await vol.mkdir("/d/e")
        for path, data in (("/a.bin", b"A" * (3 * cs)), ("/b.bin", b"B" * (2 * cs)),
                           ("/d/e/f.txt", b"ffff"), ("/a long file name.txt", b"long")):
            await vol.create(path)
            await vol.write(path, 0, data)
        first = {p: (await vol.stat(p)).first_cluster
                 for p in ("/a.bin", "/b.bin", "/d", "/d/e", "/d/e/f.txt")}
    return image, first


def boot_of(image: Path) -> BootSector:
    return parse_boot_sector(image.read_bytes()[:512])


def patch(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def edit_fat(image: Path, edits: dict[int, int], copies: tuple[int, ...] = (0, 1)) -> None:
    bs = boot_of(image)
    ss = bs.bytes_per_sector
    raw = image.read_bytes()
    start = bs.fat_start * ss
    size = bs.fat_size * ss
    table = FatTable(raw[start:start + size], bs.fat_type, bs.max_cluster, ss)
    for n, v in edits.items():
        table.set(n, v)
    for c in copies:
        patch(image, start + c * size, table.raw)


def entry_offset(image: Path, short: bytes) -> int:
    """Byte offset of the (unique) short entry named ``short`` (11 bytes)."""
    raw = image.read_bytes()
    at = raw.find(short)
    while at % 32:
        at = raw.find(short, at + 1)
    assert at > 0
    return at


async def expect_eio(image: Path, path: str, words: str) -> list[str]:
    """Mount must work; ``path`` gives EIO with ``words``; the other files still read."""
    async with mounted(image, read_only=True) as vol:
        await vol.stat(path)
        for op in (vol.read(path), vol.extents(path)):
            with pytest.raises(BadChain, match=words) as info:
                await op
            assert info.value.errno == errno.EIO
        assert await vol.read("/d/e/f.txt") == b"ffff"
        return await vol.check()


# -- mount-refusing damage ---------------------------------------------------------
_BPB_EDITS = [
    ("bad_bytes_per_sector", 11, (1000).to_bytes(2, "little"), "bytes per sector"),
    ("bad_sectors_per_cluster", 13, bytes([3]), "sectors per cluster"),
    ("zero_fat_count", 16, bytes([0]), "FAT count"),
    ("zero_reserved_sectors", 14, bytes(2), "reserved sector count"),
    ("missing_signature", 510, bytes(2), "0x55AA"),
]


@pytest.mark.parametrize("fat", FATS)
@pytest.mark.parametrize(("case", "offset", "data", "words"), _BPB_EDITS)
async def test_refused_at_mount(tmp_path: Path, fat: int, case: str, offset: int, data: bytes,
                                words: str) -> None:
    image, _ = await clean_image(tmp_path, fat)
    patch(image, offset, data)
    with FileSectorIO(image) as io, pytest.raises(BadBootSector, match=words) as info:
        await FatVolume.mount(io)
    assert info.value.errno == errno.EIO, case


@pytest.mark.parametrize("fat", FATS)
async def test_truncated_image_refused(tmp_path: Path, fat: int) -> None:
    image, _ = await clean_image(tmp_path, fat)
    os.truncate(image, image.stat().st_size - 64 * 1024)
    with FileSectorIO(image) as io, pytest.raises(TruncatedImage, match="truncated"):
        await FatVolume.mount(io, read_only=True)


# -- per-file damage: EIO on that file only ------------------------------------------------
@pytest.mark.parametrize("fat", FATS)
async def test_chain_damage_gives_eio(tmp_path: Path, fat: int) -> None:
    image, first = await clean_image(tmp_path, fat)
    a = first["/a.bin"]
    reserved_value = {12: 0xFF0, 16: 0xFFF0, 32: 0x0FFFFFF0}[fat]
    for edits, words in (({a + 1: a}, "cyclic"), ({a + 1: 0}, "free cluster"),
                         ({a: 1}, "reserved/out-of-range"),
                         ({a + 1: reserved_value}, "reserved/out-of-range")):
        edit_fat(image, edits)
        report = await expect_eio(image, "/a.bin", words)
        assert any("a.bin" in line for line in report)
        edit_fat(image, {a: a + 1, a + 1: a + 2, a + 2: 0x0FFFFFFF})  # repair
    async with mounted(image, read_only=True) as vol:
        assert await vol.check() == []


@pytest.mark.parametrize("fat", FATS)
async def test_chain_shorter_than_size_is_clipped(tmp_path: Path, fat: int) -> None:
    """A 3-cluster file whose chain ends after 2: open, stat and read see 2 clusters."""
    image, first = await clean_image(tmp_path, fat)
    a = first["/a.bin"]
    edit_fat(image, {a + 1: 0x0FFFFFFF})
    async with mounted(image, read_only=True) as vol:
        cs = vol.boot.cluster_size
        assert (await vol.stat("/a.bin")).size == 2 * cs
        assert await vol.read("/a.bin") == b"A" * (2 * cs)
        handle = await vol.open("/a.bin")
        assert (await vol.stat(handle)).size == 2 * cs
        assert sum(e.count for e in await vol.extents(handle)) * vol.io.sector_size == 2 * cs
        await vol.close(handle)
        assert [p for p in vol.problems if "a.bin" in p and "clipped" in p]
        assert any("shorter than the file size" in line for line in await vol.check())
        assert await vol.read("/b.bin") == b"B" * (2 * cs)


@pytest.mark.parametrize("fat", FATS)
async def test_start_cluster_beyond_volume(tmp_path: Path, fat: int) -> None:
    image, _ = await clean_image(tmp_path, fat)
    at = entry_offset(image, b"A       BIN")
    patch(image, at + 20, (0x0FFF).to_bytes(2, "little"))
    patch(image, at + 26, (0xFF00).to_bytes(2, "little"))
    async with mounted(image) as vol:
        with pytest.raises(BadChain, match="outside the data region"):
            await vol.read("/a.bin")
        with pytest.raises(BadChain):
            await vol.set_size("/a.bin", 1)
        assert await vol.read("/b.bin") == b"B" * (2 * vol.boot.cluster_size)


@pytest.mark.parametrize("fat", FATS)
async def test_directory_loop(tmp_path: Path, fat: int) -> None:
    image, first = await clean_image(tmp_path, fat)
    at = entry_offset(image, b"E          ")
    d = first["/d"]
    patch(image, at + 20, (d >> 16).to_bytes(2, "little"))
    patch(image, at + 26, (d & 0xFFFF).to_bytes(2, "little"))
    async with mounted(image, read_only=True) as vol:
        assert [i.name for i in await vol.readdir("/d")] == ["e"]
        with pytest.raises(DirectoryLoop) as info:
            await vol.readdir("/d/e")
        assert info.value.errno == errno.EIO
        report = await vol.check()
        assert any("directory loop" in line for line in report)


@pytest.mark.parametrize("fat", FATS)
async def test_cross_linked_files(tmp_path: Path, fat: int) -> None:
    image, first = await clean_image(tmp_path, fat)
    at = entry_offset(image, b"B       BIN")
    a = first["/a.bin"]
    patch(image, at + 20, (a >> 16).to_bytes(2, "little"))
    patch(image, at + 26, (a & 0xFFFF).to_bytes(2, "little"))
    async with mounted(image, read_only=True) as vol:
        cs = vol.boot.cluster_size
        assert await vol.read("/b.bin") == b"A" * (2 * cs)
        report = await vol.check()
        assert any("cross-linked" in line for line in report)
        assert any("lost cluster" in line for line in report)  # b.bin's old clusters


# -- tolerated and repaired -------------------------------------------------------------
@pytest.mark.parametrize("fat", FATS)
async def test_differing_fat_copies_repaired(tmp_path: Path, fat: int) -> None:
    image, _ = await clean_image(tmp_path, fat)
    bs = boot_of(image)
    edit_fat(image, {bs.max_cluster: 0x0FFFFFFF}, copies=(1,))
    async with mounted(image, read_only=True) as vol:
        assert any("FAT copy 1 differs" in p for p in vol.problems)
        free = vol.statfs().free_clusters
    async with mounted(image) as vol:
        assert vol.statfs().free_clusters == free
    raw = image.read_bytes()
    size = bs.fat_size * bs.bytes_per_sector
    start = bs.fat_start * bs.bytes_per_sector
    assert raw[start:start + size] == raw[start + size:start + 2 * size]
    require_tool("fsck.fat")
    assert fsck_fat(image).returncode == 0


async def test_wrong_fsinfo_free_count(tmp_path: Path) -> None:
    image, _ = await clean_image(tmp_path, 32)
    bs = boot_of(image)
    at = bs.fsinfo_sector * bs.bytes_per_sector
    patch(image, at + 488, (12345).to_bytes(4, "little"))
    async with mounted(image) as vol:
        assert any("FSInfo free count 12345" in p for p in vol.problems)
        actual = vol.statfs().free_clusters
        assert actual == vol.fat.recount_free()
    info = parse_fsinfo(image.read_bytes()[at:at + 512])
    assert info.free_count == actual
    async with mounted(image, read_only=True) as vol:
        assert vol.problems == []


@pytest.mark.parametrize("fat", FATS)
async def test_dirty_flag_tolerated_and_cleared(tmp_path: Path, fat: int) -> None:
    image, _ = await clean_image(tmp_path, fat)
    patch(image, 65 if fat == 32 else 37, bytes([0x01]))  # BS_Reserved1 dirty bit
    if fat != 12:
        edit_fat(image, {1: {16: 0x7FFF, 32: 0x07FFFFFF}[fat]})  # clean-shutdown bit off
    async with mounted(image, read_only=True) as vol:
        assert vol.was_dirty and any("not cleanly" in p for p in vol.problems)
    async with mounted(image) as vol:
        assert vol.was_dirty
    async with mounted(image, read_only=True) as vol:
        assert not vol.was_dirty and vol.problems == []


@pytest.mark.parametrize("fat", FATS)
async def test_orphan_lfn_and_bad_checksum(tmp_path: Path, fat: int) -> None:
    image, _ = await clean_image(tmp_path, fat)
    async with mounted(image, read_only=True) as vol:
        short = (await vol.stat("/a long file name.txt")).short_name
    base, _, ext = short.partition(".")
    at = entry_offset(image, (base.ljust(8) + ext.ljust(3)).encode())
    lfn_count = 2  # "a long file name.txt" is 20 UTF-16 units: two LFN entries
    first_lfn = at - 32 * lfn_count
    original = image.read_bytes()[first_lfn:at]
    patch(image, first_lfn + 13, bytes([original[13] ^ 0x55]))  # checksum of entry 1
    patch(image, first_lfn + 32 + 13, bytes([original[32 + 13] ^ 0x55]))
    async with mounted(image, read_only=True) as vol:
        names = {i.name for i in await vol.readdir("/")}
        assert short in names and "a long file name.txt" not in names
        assert any("bad checksum" in line and "1 with" in line for line in await vol.check())
    patch(image, first_lfn, original)
    patch(image, first_lfn, bytes([0x01]))  # the last-flagged entry loses its 0x40 flag
    async with mounted(image, read_only=True) as vol:
        assert short in {i.name for i in await vol.readdir("/")}
        assert await vol.read("/" + short) == b"long"
        assert any("orphan" in line for line in await vol.check())


def test_every_table_row_has_a_test() -> None:
    assert {d.case for d in DAMAGE_TABLE} == set(COVERAGE)
    assert {row[0] for row in _BPB_EDITS} <= set(COVERAGE)
    assert all(callable(globals()[name]) for name in COVERAGE.values())


def test_docs_table_mirrors_code() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "fat.md").read_text(encoding="utf-8")
    section = doc.split("## Corrupted images", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    parsed = [tuple(cell.strip().strip("`") for cell in row.strip("|").split("|"))
              for row in rows]
    assert parsed == [(d.case, d.outcome, d.behaviour) for d in DAMAGE_TABLE]
