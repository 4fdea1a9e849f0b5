"""FatVolume operations on images made by our mkfs, checked by fsck.fat and mtools."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from servers.fat.errors import FatError, NoSpace, ReadOnlyVolume
from servers.fat.mkfs import make_filesystem
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.fat.helpers import mounted, mtools_tree, volume_tree
from tests.oracles import fsck_fat, require_tool

pytestmark = pytest.mark.anyio


def _image(tmp: Path, size: int = 4 << 20, **kw: object) -> Path:
    path = tmp / "vol.img"
    make_filesystem(path, size, **kw)  # type: ignore[arg-type]
    return path


def _assert_oracles_agree(image: Path, expected: dict[str, bytes | None]) -> None:
    require_tool("fsck.fat", "mdir", "mcopy")
    res = fsck_fat(image)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert mtools_tree(image) == expected


@pytest.mark.parametrize(("fat", "kw"), [(12, {}), (16, {"size": 32 << 20}),
                                         (32, {"size": 40 << 20, "cluster_size": 512})])
async def test_operations_then_fsck_and_mtools(tmp_path: Path, fat: int,
                                               kw: dict[str, int]) -> None:
    image = _image(tmp_path, **{"size": 4 << 20, **kw, "fat": fat})
    async with mounted(image) as vol:
        await vol.mkdir("/docs")
        await vol.mkdir("/docs/Ünïcødé каталог")
        h = await vol.open("/docs/Ünïcødé каталог/notes file.txt", create=True)
        await vol.write(h, 0, b"a" * 10_000)
        await vol.write(h, 20_000, b"end")
        await vol.close(h)
        await vol.create("/readme.txt")
        await vol.write("/readme.txt", 0, b"hello")
        await vol.create("/Mixed.Case.Name")
        await vol.rename("/readme.txt", "/docs/README.md")
        await vol.rename("/docs/Ünïcødé каталог", "/moved dir")
        await vol.create("/gone")
        await vol.unlink("/gone")
        await vol.mkdir("/tmpdir")
        await vol.rmdir("/tmpdir")
        await vol.set_size("/Mixed.Case.Name", 3000)
        tree = await volume_tree(vol)
    expected = {
        "/docs": None, "/docs/README.md": b"hello", "/moved dir": None,
        "/moved dir/notes file.txt": b"a" * 10_000 + bytes(10_000) + b"end",
        "/Mixed.Case.Name": bytes(3000),
    }
    assert tree == expected
    _assert_oracles_agree(image, expected)


async def test_errors_are_typed(tmp_path: Path) -> None:
    image = _image(tmp_path)
    async with mounted(image) as vol:
        await vol.mkdir("/d")
        await vol.create("/d/f")
        cases = [
            (vol.stat("/nope"), errno.ENOENT), (vol.create("/d/F"), errno.EEXIST),
            (vol.readdir("/d/f"), errno.ENOTDIR), (vol.stat("/d/f/x"), errno.ENOTDIR),
            (vol.unlink("/d"), errno.EISDIR), (vol.rmdir("/d"), errno.ENOTEMPTY),
            (vol.rmdir("/d/f"), errno.ENOTDIR), (vol.create("/bad?name"), errno.EINVAL),
            (vol.create("/" + "n" * 256), errno.ENAMETOOLONG), (vol.open("/d"), errno.EISDIR),
            (vol.rename("/d", "/d/sub"), errno.EINVAL), (vol.rename("/d/f", "/"), errno.EBUSY),
            (vol.set_size("/d/f", -1), errno.EINVAL), (vol.open("/missing"), errno.ENOENT),
        ]
        for coro, err in cases:
            with pytest.raises(OSError) as info:
                await coro
            assert info.value.errno == err, (info.value, err)
        with pytest.raises(FileNotFoundError):
            await vol.unlink("/d/missing")


async def test_read_only_mount_refuses_writes(tmp_path: Path) -> None:
    image = _image(tmp_path)
    before = image.read_bytes()
    async with mounted(image, read_only=True) as vol:
        with pytest.raises(ReadOnlyVolume) as info:
            await vol.create("/x")
        assert info.value.errno == errno.EROFS
    assert image.read_bytes() == before


@pytest.mark.parametrize("fat", [16, 32])
async def test_dirty_flag_while_mounted(tmp_path: Path, fat: int) -> None:
    image = _image(tmp_path, **({"size": 40 << 20, "cluster_size": 512, "fat": 32}
                                if fat == 32 else {"fat": 16, "size": 32 << 20}))
    io = FileSectorIO(image)
    vol = await FatVolume.mount(io)
    assert vol.fat.clean is False
    probe = await FatVolume.mount(FileSectorIO(image, read_only=True), read_only=True)
    assert probe.was_dirty and any("not cleanly" in p for p in probe.problems)
    await vol.unmount()
    io.close()
    async with mounted(image, read_only=True) as again:
        assert not again.was_dirty and again.problems == []


async def test_root_directory_full_is_enospc_and_clean(tmp_path: Path) -> None:
    image = _image(tmp_path, fat=12, size=1 << 20)
    async with mounted(image) as vol:
        n = 0
        with pytest.raises(NoSpace):
            while True:
                await vol.create(f"/F{n}")
                n += 1
        assert n == 512
        with pytest.raises(NoSpace):
            await vol.mkdir("/one more directory with a long name")
        assert len(await vol.readdir("/")) == 512
    require_tool("fsck.fat")
    assert fsck_fat(image).returncode == 0


async def test_disk_full_is_enospc_and_nothing_half_written(tmp_path: Path) -> None:
    image = _image(tmp_path, fat=12, size=1 << 20)
    async with mounted(image) as vol:
        free = vol.statfs().free_clusters
        h = await vol.open("/big", create=True)
        await vol.set_size(h, (free - 1) * 4096)
        with pytest.raises(NoSpace):
            await vol.set_size(h, (free + 1) * 4096)
        assert (await vol.stat(h)).size == (free - 1) * 4096
        await vol.mkdir("/last")  # takes the final cluster
        with pytest.raises(NoSpace):
            await vol.mkdir("/no room")
        with pytest.raises(NoSpace):
            await vol.set_size(h, free * 4096)
        await vol.close(h)
        assert vol.statfs().free_clusters == 0 == vol.fat.recount_free()
    require_tool("fsck.fat")
    assert fsck_fat(image).returncode == 0


async def test_set_size_returns_new_extents_and_grows_contiguously(tmp_path: Path) -> None:
    image = _image(tmp_path, fat=16, size=32 << 20)
    async with mounted(image) as vol:
        assert vol.data_alignment_ok()
        h = await vol.open("/f", create=True)
        assert (await vol.stat(h)).first_cluster == 0
        new = await vol.set_size(h, 10_000, zero_fill=False)
        assert [(e.file_offset, e.count) for e in new] == [(0, 24)]
        assert (await vol.stat("/f")).first_cluster != 0
        more = await vol.set_size(h, 20_000, zero_fill=False)
        assert more[0].file_offset == 12288 and more[0].lba == new[0].lba + 24
        assert await vol.set_size(h, 19_000) == []
        ext = await vol.extents(h)
        assert ext == [type(ext[0])(0, new[0].lba, 40)]
        await vol.set_size(h, 0)
        assert (await vol.stat(h)).first_cluster == 0
        assert await vol.extents(h) == []


async def test_open_file_survives_rename_and_unlink(tmp_path: Path) -> None:
    image = _image(tmp_path)
    async with mounted(image) as vol:
        await vol.mkdir("/a")
        h = await vol.open("/a/file", create=True)
        await vol.rename("/a/file", "/renamed with long name")
        await vol.write(h, 0, b"data")
        assert await vol.read("/renamed with long name") == b"data"
        assert (await vol.stat(h)).name == "renamed with long name"
        free = vol.statfs().free_clusters
        await vol.unlink("/renamed with long name")
        assert vol.statfs().free_clusters == free  # clusters kept while open
        assert await vol.read(h) == b"data"
        await vol.close(h)
        assert vol.statfs().free_clusters == free + 1
        with pytest.raises(FatError) as info:
            await vol.stat(h)
        assert info.value.errno == errno.EBADF
    require_tool("fsck.fat")
    assert fsck_fat(image).returncode == 0


async def test_rename_replaces_and_fixes_dotdot(tmp_path: Path) -> None:
    image = _image(tmp_path)
    async with mounted(image) as vol:
        for d in ("/x", "/y", "/x/inner", "/empty"):
            await vol.mkdir(d)
        await vol.create("/x/inner/f")
        await vol.write("/x/inner/f", 0, b"one")
        await vol.create("/y/target")
        await vol.write("/y/target", 0, b"two")
        await vol.rename("/x/inner/f", "/y/target")  # replace a file
        assert await vol.read("/y/target") == b"one"
        await vol.rename("/x/inner", "/y/inner")  # move a directory: '..' must follow
        await vol.rename("/y/inner", "/empty")  # replace an empty directory
        await vol.rename("/y/target", "/Y/TARGET")  # case-only rename
        assert [i.name for i in await vol.readdir("/y")] == ["TARGET"]
        with pytest.raises(OSError) as info:
            await vol.rename("/empty", "/y")
        assert info.value.errno == errno.ENOTEMPTY
        tree = await volume_tree(vol)
    expected = {"/x": None, "/y": None, "/y/TARGET": b"one", "/empty": None}
    assert tree == expected
    _assert_oracles_agree(image, expected)


async def test_many_entries_grow_directory(tmp_path: Path) -> None:
    image = _image(tmp_path, cluster_size=512, fat=12, size=2 << 20)
    async with mounted(image) as vol:
        await vol.mkdir("/d")
        names = [f"entry number {i} with a long name" for i in range(60)]
        for n in names:
            await vol.create(f"/d/{n}")
        for n in names[::3]:
            await vol.unlink(f"/d/{n}")
        await vol.create("/d/reuses a deleted slot")
        listed = {i.name for i in await vol.readdir("/d")}
    assert listed == set(names) - set(names[::3]) | {"reuses a deleted slot"}
    require_tool("fsck.fat", "mdir")
    assert fsck_fat(image).returncode == 0
    assert len([k for k in mtools_tree(image) if k.startswith("/d/")]) == len(listed)
