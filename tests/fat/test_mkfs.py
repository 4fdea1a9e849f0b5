"""Our mkfs over its option matrix: fsck.fat and mtools must accept every image."""

from __future__ import annotations

from pathlib import Path

import pytest

from servers.fat.mkfs import make_filesystem, plan_filesystem
from tests.fat.helpers import mounted, mtools_tree
from tests.oracles import fsck_fat, require_tool, run_tool

pytestmark = [pytest.mark.anyio]

MIB = 1 << 20
CASES = [
    # (size, fat, cluster, sector, partition_start, unaligned)
    (1 * MIB, None, 4096, 512, None, False),
    (8 * MIB, 12, 2048, 512, None, True),
    (16 * MIB, 16, 2048, 512, None, False),
    (64 * MIB, None, 4096, 512, None, False),
    (64 * MIB, 16, 4096, 512, 2048, False),
    (64 * MIB, 16, 4096, 512, 63, True),
    (34 * MIB, 32, 512, 512, None, False),
    (40 * MIB, 32, 512, 512, 1, True),
    (300 * MIB, 32, 4096, 4096, None, False),
    (300 * MIB, 32, 4096, 4096, 256, False),
    (8 * MIB, 12, 4096, 4096, None, False),
    (256 * MIB, 16, 32768, 4096, None, False),
    (4 * MIB, 12, 65536, 512, None, False),
]


@pytest.mark.oracle
@pytest.mark.parametrize(("size", "fat", "cluster", "sector", "part", "unaligned"), CASES)
async def test_mkfs_accepted_by_oracles(tmp_path: Path, size: int, fat: int | None,
                                        cluster: int, sector: int, part: int | None,
                                        unaligned: bool) -> None:
    require_tool("fsck.fat", "mdir", "mcopy", "mmd")
    image = tmp_path / "mk.img"
    plan = make_filesystem(image, size, fat=fat, cluster_size=cluster, sector_size=sector,
                           label="TESTVOL", partition_start=part, unaligned=unaligned)
    assert image.stat().st_size == size
    if fat is not None:
        assert plan.fat_type == fat
    assert (plan.data_offset % 4096 == 0) is not unaligned
    res = fsck_fat(image, plan.volume_offset)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    src = tmp_path / "f.bin"
    src.write_bytes(b"z" * 5000)
    img = f"{image}@@{plan.volume_offset}" if plan.volume_offset else str(image)
    assert run_tool("mmd", "-i", img, "::/A Directory").returncode == 0
    assert run_tool("mcopy", "-i", img, str(src), "::/A Directory/file.bin").returncode == 0
    assert mtools_tree(image, plan.volume_offset) == {"/A Directory": None,
                                                      "/A Directory/file.bin": b"z" * 5000}
    label = run_tool("mlabel", "-s", "-i", img, "::").stdout.decode()
    assert "TESTVOL" in label
    async with mounted(image, read_only=True, sector_size=sector,
                       partition_start=part or 0) as vol:
        assert vol.problems == []
        assert vol.data_alignment_ok() is (not unaligned and cluster % 4096 == 0)
        assert await vol.read("/a directory/FILE.BIN") == b"z" * 5000
        assert [i.name for i in await vol.readdir("/")] == ["A Directory"]
        assert vol.statfs().label == "TESTVOL"


def test_mbr_partition_types(tmp_path: Path) -> None:
    for fat, size, cluster, ptype in ((12, 4 * MIB, 4096, 0x01), (16, 32 * MIB, 4096, 0x06),
                                      (32, 40 * MIB, 512, 0x0C)):
        image = tmp_path / f"p{fat}.img"
        make_filesystem(image, size, fat=fat, cluster_size=cluster, partition_start=2048)
        mbr = image.read_bytes()[:512]
        assert mbr[510:] == b"\x55\xaa" and mbr[446 + 4] == ptype
        assert int.from_bytes(mbr[446 + 8:446 + 12], "little") == 2048


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"size": 8 * MIB, "fat": 32}, "FAT32 needs"),
    ({"size": 1 * MIB, "fat": 16}, "FAT16 needs"),
    ({"size": 512 * MIB, "fat": 12}, "FAT12 needs"),
    ({"size": 8 * MIB, "cluster_size": 3000}, "cluster size"),
    ({"size": 8 * MIB, "cluster_size": 128 * 1024}, "cluster size"),
    ({"size": 8 * MIB, "sector_size": 1000}, "sector size"),
    ({"size": 8 * MIB, "label": "much too long label"}, "label"),
    ({"size": 8 * MIB, "sector_size": 4096, "unaligned": True}, "misalign"),
    ({"size": 4096}, "too small"),
])
def test_impossible_combinations_raise(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        plan_filesystem(**kwargs)  # type: ignore[arg-type]


def test_auto_fat_type_follows_cluster_count() -> None:
    assert plan_filesystem(1 * MIB).fat_type == 12
    assert plan_filesystem(64 * MIB).fat_type == 16
    assert plan_filesystem(300 * MIB).fat_type == 32
    assert plan_filesystem(40 * MIB, cluster_size=512).fat_type == 32
