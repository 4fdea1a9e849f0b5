"""Clusters smaller than a page: a page the file's clusters end inside is never kept zero-copy.

Found by the power-cut sweep (seed 2, FAT12, ``/d39/f45.bin``; docs/fat.md):
a file page whose 4 KiB were the file's clusters is mapped as the cache page
itself (zero-copy). When the file's clusters then end inside that page (a
truncate, or the last close giving a reservation back), the rest of its 4 KiB
are freed clusters; the next growth gets new clusters elsewhere, but its bytes
were stored into the old page and written into the freed clusters. The file
read back right through the system (from the page) and wrong from the disk,
fsynced or not, at every cut and after a clean unmount.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import microkernel
from drivers.recording import Recorder, image_after, write_image
from microkernel.config import CacheConfig, DeviceConfig, SystemConfig
from microkernel.crashcheck import Journal, check_all
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from servers.vfs.server import VfsServer
from tests.durability.harness import DRIVER
from tests.e2e.conftest import fsck_ok, mtype
from tests.oracles import require_tool

pytestmark = pytest.mark.anyio

# (FAT type, image size, cluster size): clusters of 2 KiB and 512 bytes, data page-aligned
# with the first file's cluster on a page boundary (FAT32's root directory takes cluster 2:
# with 512-byte clusters its files start off a page boundary and every page is a copy).
VOLUMES = {"fat12-2k": (12, "4M", 2048), "fat16-2k": (16, "16M", 2048),
           "fat16-512": (16, "16M", 512)}


def _image(tmp_path: Path, volume: str) -> Path:
    fat, size, cluster = VOLUMES[volume]
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size=size, fat=fat, cluster_size=cluster)
    return image


async def _runs(image: Path, path: str) -> int:
    """How many runs of consecutive clusters the file has on the disk."""
    io = FileSectorIO(image, read_only=True)
    try:
        vol = await FatVolume.mount(io, read_only=True)
        return len(await vol.extents(path))
    finally:
        io.close()


def _zero_copy_pages(system: microkernel.System, name: str) -> list[int]:
    """The file's pages the kernel file driver maps as cache pages (not copies)."""
    vfs = system.server("vfs")
    assert isinstance(vfs, VfsServer)
    (cfile,) = [c for c in vfs.files.values() if c.info.name == name]
    return [page for page, fp in cfile.pages.items() if fp.cache_lba is not None]


@pytest.mark.parametrize("volume", sorted(VOLUMES))
async def test_an_append_after_the_last_close_gave_the_reservation_back_reaches_the_disk(
        tmp_path: Path, volume: str) -> None:
    """9000 bytes and close: the reservation goes back, clusters and all, from inside page 2
    on; another file takes the clusters after; the append's clusters lie elsewhere."""
    require_tool("fsck.fat", "mtype")
    image = _image(tmp_path, volume)
    async with microkernel.boot(image=image, memory="32M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/f.bin", "wb") as f:
            await f.write(b"a" * 9000)
        async with await proc.open("/g.bin", "wb") as f:
            await f.write(b"g" * 5000)
        async with await proc.open("/f.bin", "ab") as f:
            await f.write(b"B" * 3000)
        assert await proc.read_file("/f.bin") == b"a" * 9000 + b"B" * 3000
    assert await _runs(image, "/f.bin") == 2  # the growth did not continue the chain's run
    fsck_ok(image)
    assert mtype(image, "/f.bin") == b"a" * 9000 + b"B" * 3000
    assert mtype(image, "/g.bin") == b"g" * 5000


@pytest.mark.parametrize("volume", sorted(VOLUMES))
async def test_a_truncate_inside_a_page_then_an_append_keeps_the_fsynced_bytes_at_every_cut(
        tmp_path: Path, volume: str) -> None:
    """The sweep's case, on one handle: 9000 bytes truncated to 930 and fsynced (the clusters
    end inside page 0), a directory takes the next free cluster, 3000 bytes appended and
    fsynced. (Closed in between, the last close drops the page instead.)"""
    require_tool("fsck.fat", "mtype")
    image = _image(tmp_path, volume)
    cfg = SystemConfig(memory="32M", devices=[DeviceConfig(image=str(image), driver=DRIVER,
                                                           name="disk0")],
                       cache=CacheConfig(writeback_interval=None))
    want = b"a" * 930 + b"B" * 3000
    async with microkernel.boot(config=cfg) as system:
        drv = system.server("disk0")
        assert isinstance(drv, Recorder)
        journal = Journal(drv.write_log)
        proc = await system.spawn("p")
        journal.touch("/f.bin")
        async with await proc.open("/f.bin", "w+b") as f:
            await f.write(b"a" * 9000)
            await f.fsync()
            assert 0 in _zero_copy_pages(system, "f.bin")  # page 0 is the cache page itself
            journal.touch("/f.bin")
            await f.truncate(930)
            await f.fsync()
            journal.fsynced("/f.bin", b"a" * 930)
            journal.touch()
            await proc.mkdir("/d")
            journal.touch("/f.bin")
            f.seek(930)
            await f.write(b"B" * 3000)
            await f.fsync()
            journal.fsynced("/f.bin", want)
        assert await proc.read_file("/f.bin") == want
    journal.unmounted({"/f.bin": want})
    final = tmp_path / "final.img"  # the ramdisk writes nothing back: the log's end
    write_image(final, image_after(drv.write_log, len(drv.write_log.entries)))
    assert await _runs(final, "/f.bin") == 2  # the growth did not continue the chain's run
    assert mtype(final, "/f.bin") == want
    tally = await check_all(journal, tmp_path, seed=1, samples=2)
    assert tally.failures == [], tally.summary()
    assert tally.fsynced_lost == 0 and tally.fsynced_checked > 0 and tally.damaged == 0
