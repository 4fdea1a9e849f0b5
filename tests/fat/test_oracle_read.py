"""Images made by mkfs.fat and populated by mtools, read back through FatVolume byte for byte."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.fat.helpers import Tree, mounted, volume_tree
from tests.oracles import fsck_fat, require_tool, run_tool

pytestmark = [pytest.mark.anyio, pytest.mark.oracle]

# FAT type -> target cluster count (inside the type's range per the Microsoft rule)
_CLUSTERS = {12: 2000, 16: 5000, 32: 66000}
MATRIX = [
    pytest.param(fat, spc, ss, aligned, id=f"fat{fat}-spc{spc}-ss{ss}-{'al' if aligned else 'a'}")
    for fat, spc, ss, aligned in itertools.product((12, 16, 32), (1, 8, 64), (512, 4096),
                                                  (True, False))
    # FAT32 needs >= 65525 clusters: keep those images small by using small clusters only
    if not (fat == 32 and spc * ss > 4096) and spc * ss <= 65536
]


def _content(n: int, seed: int) -> bytes:
    return bytes((i * 131 + seed * 7 + i // 251) & 0xFF for i in range(n))


def populate(image: Path, cluster: int, host: Path) -> Tree:
    """Fill an image with mtools: long, lower-case, non-ASCII names, nested directories."""
    big = min(3 * cluster + 1234, 300_000)
    files = {
        "/Ünïcødé файл.txt": b"unicode body\n",
        "/lower.txt": _content(777, 1),
        "/UPPER.TXT": b"",
        "/Some Long Directory/nested/deeper/A Very Long File Name With Spaces.data":
            _content(big, 2),
        "/Some Long Directory/short.c": _content(cluster, 3),
        "/Some Long Directory/nested/x.y.z (copy).tar.gz": _content(5000, 4),
    }
    tree: Tree = {"/Some Long Directory": None, "/Some Long Directory/nested": None,
                  "/Some Long Directory/nested/deeper": None, "/empty dir": None}
    for d in tree:
        assert run_tool("mmd", "-i", str(image), "::" + d).returncode == 0
    for i, (path, data) in enumerate(files.items()):
        src = host / f"{i}-{path.rsplit('/', 1)[1]}"
        src.write_bytes(data)
        res = run_tool("mcopy", "-i", str(image), str(src), "::" + path)
        assert res.returncode == 0, res.stderr
    tree.update(files)
    return tree


def make_image(tmp: Path, fat: int, spc: int, ss: int, aligned: bool) -> Path | None:
    cluster = spc * ss
    kib = (_CLUSTERS[fat] * cluster) // 1024 + (fat == 32) * 1024 + 256
    image = tmp / "oracle.img"
    args = ["mkfs.fat", "-C", "-F", str(fat), "-s", str(spc), "-S", str(ss)]
    if not aligned:
        args.append("-a")
    res = run_tool(*args, str(image), str(kib))
    return image if res.returncode == 0 else None


@pytest.mark.parametrize(("fat", "spc", "ss", "aligned"), MATRIX)
async def test_read_mkfs_fat_images(tmp_path: Path, fat: int, spc: int, ss: int,
                                    aligned: bool) -> None:
    require_tool("mkfs.fat", "mmd", "mcopy", "fsck.fat")
    image = make_image(tmp_path, fat, spc, ss, aligned)
    if image is None:
        pytest.skip(f"mkfs.fat refuses FAT{fat} with {spc}x{ss}-byte clusters")
    expected = populate(image, spc * ss, tmp_path)
    assert fsck_fat(image).returncode == 0
    async with mounted(image, read_only=True, sector_size=ss) as vol:
        assert vol.boot.fat_type == fat
        assert vol.problems == []
        assert await volume_tree(vol) == expected
        info = await vol.stat("/some long directory/NESTED/deeper/a very long file name with "
                              "spaces.DATA")
        assert info.size == len(expected["/Some Long Directory/nested/deeper/"
                                         "A Very Long File Name With Spaces.data"] or b"")
        assert (await vol.stat("/lower.txt")).short_name == "lower.txt"
        assert vol.statfs().free_clusters == vol.fat.recount_free()
        if aligned and spc * ss >= 4096:
            assert vol.data_alignment_ok()


async def test_extents_merge_contiguous_clusters(tmp_path: Path) -> None:
    require_tool("mkfs.fat", "mmd", "mcopy")
    image = make_image(tmp_path, 16, 1, 512, True)
    assert image is not None
    populate(image, 512, tmp_path)
    async with mounted(image, read_only=True) as vol:
        path = "/Some Long Directory/nested/deeper/A Very Long File Name With Spaces.data"
        size = (await vol.stat(path)).size
        extents = await vol.extents(path)
        assert sum(e.count for e in extents) * 512 == -(-size // 512) * 512
        assert len(extents) == 1  # mtools wrote it into a fresh, contiguous run
        part = await vol.extents(path, 1000, 600)
        assert part[0].file_offset == 512 and sum(e.count for e in part) == 3
        data = await vol.read(path, 1000, 600)
        assert data == _content(3 * 512 + 1234, 2)[1000:1600]
