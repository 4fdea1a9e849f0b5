"""A parsed directory kept in place by creates equals a fresh parse of the same bytes.

Creates add their entry set to the listing without a reparse (``DirListing.add``);
unlinks and renames reparse. After any mix, every kept index and count must be
what ``parse_directory`` reads from the directory's bytes, and mtools must agree.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.fat.dirent import parse_directory
from servers.fat.mkfs import make_filesystem
from servers.fat.volume import FatVolume
from tests.fat.helpers import mounted, mtools_tree
from tests.oracles import fsck_fat, require_tool

NAMES = st.sampled_from(
    ["A.BIN", "b.txt", "Long File Name.dat", "LONG FILE NAME.DAT", "x", "Ünïcødé.txt", "C.BIN",
     "another long name here.bin", "F00001.BIN", "f00001.bin"]
)
OPS = st.lists(
    st.tuples(st.sampled_from(["create", "unlink", "rename"]), NAMES, NAMES), max_size=25
)


def _same(kept: object, fresh: object) -> None:
    for field in ("slots", "end", "orphan_lfn", "bad_checksum", "deleted"):
        assert getattr(kept, field) == getattr(fresh, field), field


async def _check_dirs(vol: FatVolume) -> None:
    for key in list(vol._dirs):
        d = vol._dirs[key]
        fresh = parse_directory(d.data)
        _same(d.listing, fresh)
        assert d.listing.short_names() == {s.entry.name for s in fresh.slots}
        for slot in fresh.slots:
            if not (slot.entry.is_dot or slot.entry.is_label):
                assert d.listing.find(slot.name.upper()) is not None


async def _run(image: Path, ops: list[tuple[str, str, str]]) -> set[str]:
    live: set[str] = set()
    async with mounted(image) as vol:
        await vol.mkdir("/d")
        for op, a, b in ops:
            try:
                if op == "create":
                    await vol.create(f"/d/{a}")
                elif op == "unlink":
                    await vol.unlink(f"/d/{a}")
                else:
                    await vol.rename(f"/d/{a}", f"/d/{b}")
            except OSError:
                pass
            await _check_dirs(vol)
        live = {info.name for info in await vol.readdir("/d")}
    return live


@settings(max_examples=30, deadline=None)
@given(OPS)
def test_creates_keep_the_listing_equal_to_a_fresh_parse(ops: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "v.img"
        make_filesystem(image, 4 << 20, fat=12)
        anyio.run(_run, image, ops)


def test_many_creates_in_one_directory_agree_with_mtools(tmp_path: Path) -> None:
    require_tool("fsck.fat", "mdir", "mcopy")
    image = tmp_path / "v.img"
    make_filesystem(image, 32 << 20, fat=16)
    names = [f"F{i:05d}.BIN" for i in range(300)] + [f"long name {i}.dat" for i in range(40)]

    async def fill() -> None:
        async with mounted(image) as vol:
            await vol.mkdir("/d")
            for name in names:
                await vol.create(f"/d/{name}")
            await vol.unlink("/d/F00007.BIN")
            await vol.create("/d/reused slot.bin")  # goes into the deleted entries
            await _check_dirs(vol)

    anyio.run(fill)
    res = fsck_fat(image)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    expected = {f"/d/{n}" for n in names if n != "F00007.BIN"} | {"/d/reused slot.bin"}
    assert set(mtools_tree(image)) == expected | {"/d"}
