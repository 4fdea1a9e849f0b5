"""A rename cut between its two entry writes: mount repair keeps exactly one name, the new one.

A rename across directories (or across pages of one directory) writes the new
entry, then removes the old one (docs/fat.md), so a power cut between the two
leaves two names sharing one chain. Each test records one such rename through
the whole system on the recording ramdisk, rebuilds the disk at every cut point
inside the rename, and checks each: in the window (fsck: two names share
clusters) mount repair keeps the new name (the rename completes) and a moved
directory's ``..`` names its new parent; before it (the old name only marked)
the old name stays; ``fsck.fat -n`` is clean after every repair, and the
content fsynced before the rename reads back under the name kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import microkernel
from clients.process import UserProcess
from drivers.recording import Recorder, WriteLog, image_after
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.crashcheck import fsck
from servers.fat.dirent import DOTDOT_NAME, ENTRY_SIZE, ShortEntry
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.oracles import fsck_fat, require_tool

pytestmark = pytest.mark.anyio

DATA = bytes(range(256)) * 40  # 10 KiB: three or more clusters on every volume below
Step = Callable[[UserProcess], Awaitable[None]]


async def _record(image: Path, setup: Step, rename: Step) -> tuple[WriteLog, int, int]:
    """Run ``setup`` then ``rename``; return the write log and the rename's log positions."""
    cfg = SystemConfig(memory="32M", devices=[DeviceConfig(
        image=str(image), driver="drivers.recording:RecordingRamDisk", name="disk0")],
        cache=CacheConfig(writeback_interval=None))
    async with microkernel.boot(config=cfg) as system:
        disk = system.server("disk0")
        assert isinstance(disk, Recorder)
        proc = await system.spawn("p")
        await setup(proc)
        start = disk.write_log.mark()
        await rename(proc)
        end = disk.write_log.mark()
    return disk.write_log, start, end


def _windows(log: WriteLog, start: int, end: int, image: Path) -> list[int]:
    """The cut points inside the rename at which fsck sees two names share clusters."""
    cuts = []
    for cut in range(start, end + 1):
        image.write_bytes(image_after(log, cut))
        if any("share clusters" in line for line in fsck(image)[1]):
            cuts.append(cut)
    return cuts


async def _repaired(image: Path) -> tuple[FatVolume, list[str]]:
    """Mount (repairing) and unmount; fsck must call it clean; a read-only mount, the repairs."""
    io = FileSectorIO(image)
    vol = await FatVolume.mount(io)
    assert vol.was_dirty
    problems = vol.problems
    await vol.unmount()
    io.close()
    done = fsck_fat(image)
    assert done.returncode == 0, done.stdout.decode()
    return await FatVolume.mount(FileSectorIO(image, read_only=True), read_only=True), problems


async def _exists(vol: FatVolume, path: str) -> bool:
    try:
        await vol.stat(path)
    except FileNotFoundError:
        return False
    return True


async def _dotdot(vol: FatVolume, path: str) -> int:
    """The cluster the ``..`` entry of directory ``path`` names (0: the root)."""
    info = await vol.stat(path)
    raw = await vol.io.read(vol.boot.cluster_to_sector(info.first_cluster), 1)
    up = ShortEntry.unpack(raw[ENTRY_SIZE:2 * ENTRY_SIZE])
    assert up.name == DOTDOT_NAME
    return up.cluster


async def _check_cases(tmp_path: Path, fat: int, setup: Step, rename: Step, old: str,
                       new: str, check: Callable[[FatVolume], Awaitable[None]], *,
                       replacing: bool = False) -> None:
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size={12: "4M", 16: "16M", 32: "34M"}[fat], fat=fat,
                     cluster_size=512 if fat == 32 else 2048)
    log, start, end = await _record(image, setup, rename)
    cuts = _windows(log, start, end, image)
    assert cuts, "no cut point inside the rename showed two names"
    rolled_back = 0
    for cut in range(start, end + 1):  # every cut inside the rename, the window's among them
        image.write_bytes(image_after(log, cut))
        vol, problems = await _repaired(image)
        try:
            if cut in cuts:
                assert any("rename cut between its entries" in p for p in problems), problems
            if cut < cuts[0]:  # before the new name: the rename did not happen
                assert await _exists(vol, old) and await _exists(vol, new) == replacing, cut
                rolled_back += any("rename cut before its new name" in p for p in problems)
            else:  # the window and after: the rename happened
                assert not await _exists(vol, old) and await _exists(vol, new), cut
                await check(vol)
        finally:
            assert isinstance(vol.io, FileSectorIO)
            vol.io.close()
    assert rolled_back, "no cut fell between the old name's mark and the new name"


FATS = pytest.mark.parametrize("fat", [12, 16, 32])
# Old parent, new parent: repair walks /b before /a, so one way round it meets the old
# name first, the other way the new name first; the new name must win both ways.
WAYS = pytest.mark.parametrize(("fat", "src", "dst"), [
    (12, "/a", "/b"), (16, "/a", "/b"), (32, "/a", "/b"), (16, "/b", "/a"), (32, "/b", "/a")])


@WAYS
async def test_a_file_renamed_across_directories_keeps_the_new_name(
        tmp_path: Path, fat: int, src: str, dst: str) -> None:
    async def setup(proc: UserProcess) -> None:
        await proc.mkdir("/a")
        await proc.mkdir("/b")
        async with await proc.open(f"{src}/old.bin", "wb") as f:
            await f.write(DATA)
            await f.fsync()

    async def rename(proc: UserProcess) -> None:
        await proc.rename(f"{src}/old.bin", f"{dst}/new.bin")

    async def check(vol: FatVolume) -> None:
        assert await vol.read(f"{dst}/new.bin") == DATA
        assert [f.name for f in await vol.readdir(src)] == []

    await _check_cases(tmp_path, fat, setup, rename, f"{src}/old.bin", f"{dst}/new.bin", check)


@WAYS
async def test_a_file_replacing_one_in_another_directory_keeps_the_new_name(
        tmp_path: Path, fat: int, src: str, dst: str) -> None:
    # The new entry took over the replaced file's entry in place: keeping the old name
    # instead would leave the target name naming nothing at all.
    async def setup(proc: UserProcess) -> None:
        await proc.mkdir("/a")
        await proc.mkdir("/b")
        await proc.write_file(f"{dst}/new.bin", b"replaced" * 900)
        async with await proc.open(f"{src}/old.bin", "wb") as f:
            await f.write(DATA)
            await f.fsync()

    async def rename(proc: UserProcess) -> None:
        await proc.rename(f"{src}/old.bin", f"{dst}/new.bin")

    async def check(vol: FatVolume) -> None:
        assert await vol.read(f"{dst}/new.bin") == DATA

    await _check_cases(tmp_path, fat, setup, rename, f"{src}/old.bin", f"{dst}/new.bin", check,
                       replacing=True)


@FATS
async def test_a_file_renamed_across_pages_of_one_directory_keeps_the_new_name(
        tmp_path: Path, fat: int) -> None:
    # 40 names of four entries each: the new name's entries land in the directory's
    # second 4 KiB page, the old name's in its first.
    long = "a-long-name-that-needs-three-lfn-slots-{:03}.txt"

    async def setup(proc: UserProcess) -> None:
        await proc.mkdir("/a")
        async with await proc.open("/a/old.bin", "wb") as f:
            await f.write(DATA)
            await f.fsync()
        for n in range(40):
            await proc.write_file("/a/" + long.format(n), b"")

    async def rename(proc: UserProcess) -> None:
        await proc.rename("/a/old.bin", "/a/" + long.format(999))

    async def check(vol: FatVolume) -> None:
        assert await vol.read("/a/" + long.format(999)) == DATA
        assert len(await vol.readdir("/a")) == 41

    await _check_cases(tmp_path, fat, setup, rename, "/a/old.bin", "/a/" + long.format(999),
                       check)


@WAYS
async def test_a_directory_moved_to_another_parent_keeps_the_new_name_and_dotdot(
        tmp_path: Path, fat: int, src: str, dst: str) -> None:
    async def setup(proc: UserProcess) -> None:
        await proc.mkdir("/a")
        await proc.mkdir("/b")
        await proc.mkdir(f"{src}/d")
        async with await proc.open(f"{src}/d/inner.bin", "wb") as f:
            await f.write(DATA)
            await f.fsync()

    async def rename(proc: UserProcess) -> None:
        await proc.rename(f"{src}/d", f"{dst}/moved")

    async def check(vol: FatVolume) -> None:
        assert await vol.read(f"{dst}/moved/inner.bin") == DATA
        assert await _dotdot(vol, f"{dst}/moved") == (await vol.stat(dst)).first_cluster

    await _check_cases(tmp_path, fat, setup, rename, f"{src}/d", f"{dst}/moved", check)
