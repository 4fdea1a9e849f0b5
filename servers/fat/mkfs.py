"""mkfs: lay out a FAT12/16/32 file system (pure planning) and write it to an image.

By default the data region starts on a 4 KiB boundary of the *disk* (reserved
sectors are padded to get there), so with clusters of 4 KiB or more every file
page is one whole cache page: the zero-copy case. ``unaligned=True`` deliberately
starts the data region on an odd sector, to exercise the copy path.
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass

from servers.fat.bpb import (
    FAT12_MAX_CLUSTERS,
    FAT16_MAX_CLUSTERS,
    FAT32_MAX_CLUSTERS,
    MAX_CLUSTER_BYTES,
    BootSector,
    FsInfo,
    pack_boot_sector,
    pack_fsinfo,
)
from servers.fat.dirent import ATTR_VOLUME_ID, ShortEntry, dos_now

PAGE = 4096
MEDIA_FIXED = 0xF8
PARTITION_TYPE = {12: 0x01, 16: 0x06, 32: 0x0C}
_CLUSTER_RANGE = {
    12: (1, FAT12_MAX_CLUSTERS),
    16: (FAT12_MAX_CLUSTERS + 1, FAT16_MAX_CLUSTERS),
    32: (FAT16_MAX_CLUSTERS + 1, FAT32_MAX_CLUSTERS),
}
_LABEL_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 $%'-_@~`!(){}^#&")


@dataclass(frozen=True, slots=True)
class FsPlan:
    """A planned file system: its boot sector and where it sits in the image."""

    boot: BootSector
    partition_start: int  # in sectors; 0 = no partition table
    image_bytes: int
    label: bytes

    @property
    def fat_type(self) -> int:
        return self.boot.fat_type

    @property
    def volume_offset(self) -> int:
        return self.partition_start * self.boot.bytes_per_sector

    @property
    def data_offset(self) -> int:
        """Byte offset of cluster 2 from the start of the image."""
        return self.volume_offset + self.boot.data_start * self.boot.bytes_per_sector


def _check_args(size: int, cluster_size: int, sector_size: int) -> int:
    if sector_size not in (512, 1024, 2048, 4096):
        raise ValueError(f"sector size {sector_size} is not a power of two in 512..4096")
    if cluster_size % sector_size or cluster_size > MAX_CLUSTER_BYTES:
        raise ValueError(f"cluster size {cluster_size} must be a multiple of the sector size "
                         f"{sector_size} and at most 64 KiB")
    spc = cluster_size // sector_size
    if spc & (spc - 1) or spc > 128:
        raise ValueError(f"cluster size {cluster_size} is not a power-of-two number of sectors")
    if size <= 0:
        raise ValueError("size must be positive")
    return spc


def _label_bytes(label: str) -> bytes:
    text = label.upper()
    if len(text) > 11 or not set(text) <= _LABEL_CHARS:
        raise ValueError(f"volume label {label!r}: at most 11 of A-Z 0-9 space $%'-_@~`!(){{}}^#&")
    return text.ljust(11).encode("ascii")


def _geometry(fat: int, vol_sectors: int, spc: int, ss: int, part: int, unaligned: bool,
              ) -> tuple[int, int, int, int]:
    """(reserved sectors, FAT size, root entries, cluster count) for one FAT type."""
    root_entries = 0 if fat == 32 else 512
    root_secs = root_entries * 32 // ss
    reserved = 32 if fat == 32 else 1
    fatsz = 1
    for _ in range(64):  # converges in a few rounds: a larger FAT only shrinks the data
        data_start = reserved + 2 * fatsz + root_secs
        data_abs = part + data_start
        if unaligned:
            reserved += 1 - data_abs % 2 if ss < PAGE else 0
        else:
            reserved += (-(data_abs * ss) % PAGE) // ss
        data_start = reserved + 2 * fatsz + root_secs
        clusters = max(0, (vol_sectors - data_start) // spc)
        need = -(-(clusters + 2) * fat // (8 * ss))
        if need <= fatsz:
            return reserved, fatsz, root_entries, clusters
        fatsz = need
        reserved = 32 if fat == 32 else 1
    raise AssertionError("FAT size did not converge")  # pragma: no cover


def plan_filesystem(size: int, fat: int | None = None, cluster_size: int = 4096,
                    sector_size: int = 512, label: str = "NO NAME",
                    partition_start: int | None = None, unaligned: bool = False,
                    volume_id: int | None = None) -> FsPlan:
    """Choose the layout; raise ValueError when the combination is impossible."""
    spc = _check_args(size, cluster_size, sector_size)
    if unaligned and sector_size >= PAGE:
        raise ValueError("cannot misalign the data region with 4 KiB sectors")
    part = partition_start or 0
    vol_sectors = size // sector_size - part
    if vol_sectors < 16:
        raise ValueError(f"{size} bytes is too small for a FAT file system")
    types = [fat] if fat is not None else [12, 16, 32]
    if fat not in (None, 12, 16, 32):
        raise ValueError(f"FAT type must be 12, 16 or 32, not {fat}")
    for t in types:
        reserved, fatsz, root_entries, clusters = _geometry(t, vol_sectors, spc, sector_size, part,
                                                            unaligned)
        lo, hi = _CLUSTER_RANGE[t]
        if lo <= clusters <= hi:
            boot = _boot(t, sector_size, spc, reserved, fatsz, root_entries, vol_sectors, part,
                         label, volume_id)
            return FsPlan(boot, part, size, _label_bytes(label))
    if fat is not None:
        lo, hi = _CLUSTER_RANGE[fat]
        raise ValueError(f"FAT{fat} needs {lo}..{hi} clusters; {size} bytes in clusters of "
                         f"{cluster_size} gives {clusters}: change the size or cluster size")
    raise ValueError(f"no FAT type fits {size} bytes with clusters of {cluster_size}")


def _boot(fat: int, ss: int, spc: int, reserved: int, fatsz: int, root_entries: int,
          vol_sectors: int, part: int, label: str, volume_id: int | None) -> BootSector:
    fat32 = fat == 32
    return BootSector(
        bytes_per_sector=ss, sectors_per_cluster=spc, reserved_sectors=reserved, num_fats=2,
        root_entries=root_entries, total_sectors=vol_sectors, media=MEDIA_FIXED, fat_size=fatsz,
        hidden_sectors=part, volume_id=random.getrandbits(32) if volume_id is None else volume_id,
        label=_label_bytes(label), fat32_layout=fat32, root_cluster=2 if fat32 else 0,
        fsinfo_sector=1 if fat32 else 0, backup_boot_sector=6 if fat32 else 0)


def _fat_head(fat: int) -> bytes:
    if fat == 12:
        return bytes([MEDIA_FIXED, 0xFF, 0xFF])
    if fat == 16:
        return struct.pack("<HH", 0xFF00 | MEDIA_FIXED, 0xFFFF)
    # FAT[0] media, FAT[1] EOC with the clean bits set, FAT[2] the root directory's EOC.
    return struct.pack("<III", 0x0FFFFF00 | MEDIA_FIXED, 0x0FFFFFFF, 0x0FFFFFFF)


def _mbr(plan: FsPlan) -> bytes:
    ss = plan.boot.bytes_per_sector
    out = bytearray(ss)
    entry = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", PARTITION_TYPE[plan.fat_type],
                        b"\xfe\xff\xff", plan.partition_start, plan.boot.total_sectors)
    out[446:462] = entry
    out[510:512] = b"\x55\xaa"
    return bytes(out)


def build_writes(plan: FsPlan) -> list[tuple[int, bytes]]:
    """Every (byte offset, bytes) the new file system needs, for any zero-filled device."""
    b = plan.boot
    ss = b.bytes_per_sector
    base = plan.volume_offset
    boot = pack_boot_sector(b)
    writes: list[tuple[int, bytes]] = [(base, boot)]
    if plan.partition_start:
        writes.append((0, _mbr(plan)))
    if b.fat_type == 32:
        info = pack_fsinfo(FsInfo(b.cluster_count - 1, 3), ss)
        writes += [(base + ss, info), (base + 6 * ss, boot), (base + 7 * ss, info)]
    head = _fat_head(b.fat_type)
    for n in range(b.num_fats):
        writes.append((base + (b.fat_start + n * b.fat_size) * ss, head))
    if plan.label.rstrip() != b"NO NAME":
        date, tm, _ = dos_now()
        entry = ShortEntry(plan.label, ATTR_VOLUME_ID, mdate=date, mtime=tm).pack()
        root = b.root_dir_start if b.fat_type != 32 else b.cluster_to_sector(2)
        writes.append((base + root * ss, entry))
    return writes


def make_filesystem(path: str | os.PathLike[str], size: int, fat: int | None = None,
                    cluster_size: int = 4096, sector_size: int = 512, label: str = "NO NAME",
                    partition_start: int | None = None, unaligned: bool = False,
                    volume_id: int | None = None) -> FsPlan:
    """Create (or overwrite) the image file ``path`` holding a fresh FAT file system."""
    plan = plan_filesystem(size, fat, cluster_size, sector_size, label, partition_start,
                           unaligned, volume_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)  # sparse: every structure not written below reads as zero
        for offset, data in build_writes(plan):
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return plan
