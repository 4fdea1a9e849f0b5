"""Namespace changes relative to a directory node: MkdirAt, RmdirAt, UnlinkAt, RenameAt, Forget.

The FUSE bridge speaks only these; here they are driven as system calls, on
FAT16 and FAT32 (whose root is a cluster chain), and judged by fsck.fat and mtools.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import microkernel
from clients.process import UserProcess
from microkernel.config import DeviceConfig, SystemConfig, default_capabilities
from servers.fs.protocol import FsInfo
from servers.vfs.protocol import ROOT_NODE, Forget, MkdirAt, RenameAt, RmdirAt, UnlinkAt
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype, run

pytestmark = pytest.mark.anyio


async def mkdir_at(proc: UserProcess, directory: int, name: str) -> int:
    info: FsInfo = await proc.syscall(MkdirAt(directory, name), FsInfo)
    assert info.is_dir and info.name == name
    return info.file_id


async def refused(code: int, proc: UserProcess, call: object) -> None:
    with pytest.raises(OSError) as info:
        await proc.syscall(call, None)  # type: ignore[arg-type]
    assert info.value.errno == code, info.value


def test_the_capability_table_lets_processes_and_the_vfs_send_the_new_calls() -> None:
    table = default_capabilities(["nvme0"], ["fat0"])
    assert {"MkdirAt", "RmdirAt", "UnlinkAt", "RenameAt", "Forget"} <= set(table["proc:*"]["vfs"])
    fs_calls = {"FsMkdirAt", "FsRmdirAt", "FsUnlinkAt", "FsRenameAt", "FsForget"}
    assert fs_calls <= set(table["vfs"]["fat0"])
    assert not fs_calls & set(table["proc:*"]["vfs"])  # a process cannot speak to the FAT


@pytest.mark.parametrize("fat", [16, 32])
async def test_a_tree_built_and_changed_by_directory_nodes(tmp_path: Path, fat: int) -> None:
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=34 * 2**20 if fat == 32 else 16 * 2**20, fat=fat, cluster_size=512)
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        chain = [ROOT_NODE]
        for i in range(30):  # a node per level: no path is ever built
            chain.append(await mkdir_at(proc, chain[-1], f"level{i}"))
        async with await proc.open_at(chain[-1], "leaf.txt", "wb") as f:
            await f.write(b"at the bottom")
        await proc.syscall(RenameAt(ROOT_NODE, "level0", ROOT_NODE, "Top"), None)
        assert (await proc.lookup(ROOT_NODE, "top")).file_id == chain[1]  # same node
        # Moving a directory below itself is judged by ancestry on the volume ('..'),
        # after the rename above changed every path below it.
        for below in (chain[1], chain[2], chain[15], chain[-1]):
            await refused(errno.EINVAL, proc, RenameAt(ROOT_NODE, "Top", below, "loop"))
        await refused(errno.EINVAL, proc, RenameAt(chain[10], "level10", chain[20], "x"))
        await proc.syscall(RenameAt(chain[-2], "level29", ROOT_NODE, "up"), None)  # 29 up
        await proc.syscall(RenameAt(chain[-1], "leaf.txt", chain[5], "LEAF.TXT"), None)
        await refused(errno.ENOTEMPTY, proc, RmdirAt(chain[-4], "level27"))
        await proc.syscall(RmdirAt(chain[-3], "level28"), None)
        await refused(errno.ENOTDIR, proc, RmdirAt(chain[5], "LEAF.TXT"))
        await refused(errno.EISDIR, proc, UnlinkAt(ROOT_NODE, "up"))
        await refused(errno.EEXIST, proc, MkdirAt(ROOT_NODE, "UP"))
        await refused(errno.ENOENT, proc, UnlinkAt(chain[5], "nothing"))
        leaf = (await proc.lookup(chain[5], "leaf.txt")).file_id
        await refused(errno.ENOTDIR, proc, MkdirAt(leaf, "x"))  # a file is no directory
        for bad in (".", "..", "", "a/b"):
            await refused(errno.EINVAL, proc, MkdirAt(chain[3], bad))
            await refused(errno.EINVAL, proc, RmdirAt(chain[3], bad))
        await proc.syscall(UnlinkAt(chain[5], "leaf.txt"), None)
        await proc.syscall(RmdirAt(ROOT_NODE, "up"), None)
        await refused(errno.ESTALE, proc, MkdirAt(chain[-2], "gone"))  # level28 was removed
        await refused(errno.ESTALE, proc, MkdirAt(1 << 60, "x"))
    fsck_ok(image)
    names = run("mdir", "-/", "-b", "-i", image, "::")
    assert "::/Top/" + "/".join(f"level{i}" for i in range(1, 27)) + "/" in names
    assert "level28" not in names and "/up" not in names and "leaf" not in names.lower()


async def test_a_forgotten_node_is_stale_and_its_entry_gets_a_new_one(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/d/f.txt": b"data"})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        d = (await proc.lookup(ROOT_NODE, "d")).file_id
        f = (await proc.lookup(d, "f.txt")).file_id
        await proc.syscall(Forget([f, d, ROOT_NODE, 1 << 60]), None)  # root and junk: ignored
        await refused(errno.ESTALE, proc, UnlinkAt(d, "f.txt"))
        d2 = (await proc.lookup(ROOT_NODE, "D")).file_id
        assert d2 not in (d, f)  # ids are never reused
        assert (await proc.lookup(d2, "f.txt")).file_id not in (d, f, d2)
        assert (await proc.lookup(ROOT_NODE, "d")).file_id == d2
    fsck_ok(image)
    assert mtype(image, "/d/f.txt") == b"data"


async def test_a_mount_point_cannot_be_changed_through_its_parent(
    make_image: ImageFactory,
) -> None:
    first, second = make_image({"/a.txt": b"a"}), make_image({"/b.txt": b"b"})
    cfg = SystemConfig(
        memory="64M",
        devices=[DeviceConfig(image=str(first), driver="nvme"),
                 DeviceConfig(image=str(second), driver="ahci")],
    )
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("p")
        other = (await proc.lookup(ROOT_NODE, "ahci1")).file_id
        await refused(errno.EBUSY, proc, RmdirAt(ROOT_NODE, "ahci1"))
        await refused(errno.EBUSY, proc, RenameAt(ROOT_NODE, "ahci1", ROOT_NODE, "x"))
        await refused(errno.EEXIST, proc, MkdirAt(ROOT_NODE, "AHCI1"))
        await refused(errno.EXDEV, proc, RenameAt(ROOT_NODE, "a.txt", other, "a.txt"))
        await proc.syscall(RenameAt(other, "b.txt", other, "c.txt"), None)
        sub = await mkdir_at(proc, other, "sub")
        await proc.syscall(RenameAt(other, "c.txt", sub, "c.txt"), None)
    fsck_ok(first)
    fsck_ok(second)
    assert mtype(second, "/sub/c.txt") == b"b"
