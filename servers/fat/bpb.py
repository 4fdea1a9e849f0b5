"""Boot sector / BPB and FSInfo: parse with full validation, and build (for mkfs).

Pure code: bytes in, dataclasses out, never any I/O. The FAT type follows the
Microsoft rule, from the cluster count alone: < 4085 is FAT12, < 65525 is FAT16,
anything else FAT32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from servers.fat.errors import BadBootSector, TruncatedImage

FAT12_MAX_CLUSTERS = 4084
FAT16_MAX_CLUSTERS = 65524
FAT32_MAX_CLUSTERS = 0x0FFFFFF5 - 2
MAX_CLUSTER_BYTES = 64 * 1024
DIRENT_SIZE = 32

# Bit 0 of BS_Reserved1 (the byte after BS_DrvNum): "volume dirty", as Linux and NT use it.
BOOT_DIRTY_BIT = 0x01
FSINFO_LEAD_SIG = 0x41615252
FSINFO_STRUC_SIG = 0x61417272
FSINFO_TRAIL_SIG = 0xAA550000
FSINFO_UNKNOWN = 0xFFFFFFFF

_COMMON = struct.Struct("<3s8sHBHBHHBHHHII")  # offsets 0..35
_EXT16 = struct.Struct("<BBBI11s8s")  # offset 36
_EXT32_HEAD = struct.Struct("<IHHIHH12s")  # offset 36
_EXT32_TAIL = struct.Struct("<BBBI11s8s")  # offset 64


def fat_type_for(cluster_count: int) -> int:
    """The Microsoft rule: the FAT type is decided by the cluster count and nothing else."""
    if cluster_count < FAT12_MAX_CLUSTERS + 1:
        return 12
    if cluster_count < FAT16_MAX_CLUSTERS + 1:
        return 16
    return 32


def _pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True, slots=True)
class BootSector:
    """The BPB fields we use, plus the geometry derived from them."""

    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    num_fats: int
    root_entries: int
    total_sectors: int
    media: int
    fat_size: int
    hidden_sectors: int = 0
    sectors_per_track: int = 32
    num_heads: int = 64
    root_cluster: int = 0
    fsinfo_sector: int = 0
    backup_boot_sector: int = 0
    ext_flags: int = 0
    volume_id: int = 0
    label: bytes = b"NO NAME    "
    oem: bytes = b"MSWIN4.1"
    drive_number: int = 0x80
    flags: int = 0
    fat32_layout: bool = False  # BPB uses the FAT32 extension (FATSz16 == 0)

    # -- derived geometry -------------------------------------------------
    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def root_dir_sectors(self) -> int:
        return -(-self.root_entries * DIRENT_SIZE // self.bytes_per_sector)

    @property
    def fat_start(self) -> int:
        return self.reserved_sectors

    @property
    def root_dir_start(self) -> int:
        return self.reserved_sectors + self.num_fats * self.fat_size

    @property
    def data_start(self) -> int:
        return self.root_dir_start + self.root_dir_sectors

    @property
    def cluster_count(self) -> int:
        return (self.total_sectors - self.data_start) // self.sectors_per_cluster

    @property
    def fat_type(self) -> int:
        return fat_type_for(self.cluster_count)

    @property
    def max_cluster(self) -> int:
        """Highest valid data cluster number (clusters are numbered from 2)."""
        return self.cluster_count + 1

    @property
    def dirty(self) -> bool:
        return bool(self.flags & BOOT_DIRTY_BIT)

    @property
    def active_fat(self) -> int | None:
        """FAT32 with mirroring disabled uses only one FAT copy; None means all are mirrored."""
        if self.fat_type == 32 and self.ext_flags & 0x80:
            return self.ext_flags & 0x0F
        return None

    def cluster_to_sector(self, cluster: int) -> int:
        return self.data_start + (cluster - 2) * self.sectors_per_cluster

def parse_boot_sector(data: bytes, device_bytes: int | None = None) -> BootSector:
    """Parse and validate sector 0; ``device_bytes`` (volume size) detects truncated images."""
    if len(data) < 512:
        raise BadBootSector(f"boot sector is {len(data)} bytes, need 512")
    if data[510:512] != b"\x55\xaa":
        raise BadBootSector("boot sector signature 0x55AA is missing")
    (_jmp, oem, bps, spc, reserved, nfats, root_entries, tot16, media, fatsz16, spt, heads,
     hidden, tot32) = _COMMON.unpack_from(data, 0)
    _check_scalars(bps, spc, reserved, nfats)
    fat32_layout = fatsz16 == 0
    fields: dict[str, int | bytes | bool] = {}
    if fat32_layout:
        fatsz, ext_flags, version, root_cl, fsinfo, backup, _ = _EXT32_HEAD.unpack_from(data, 36)
        if version != 0:
            raise BadBootSector(f"unsupported FAT32 version {version:#06x}")
        drive, flags, _sig, volid, label, _fst = _EXT32_TAIL.unpack_from(data, 64)
        fields.update(root_cluster=root_cl, fsinfo_sector=fsinfo, backup_boot_sector=backup,
                      ext_flags=ext_flags)
    else:
        fatsz = fatsz16
        drive, flags, _sig, volid, label, _fst = _EXT16.unpack_from(data, 36)
    total = tot16 if tot16 != 0 else tot32
    bs = BootSector(
        bytes_per_sector=bps, sectors_per_cluster=spc, reserved_sectors=reserved, num_fats=nfats,
        root_entries=root_entries, total_sectors=total, media=media, fat_size=fatsz,
        hidden_sectors=hidden, sectors_per_track=spt, num_heads=heads, volume_id=volid,
        label=label, oem=oem, drive_number=drive, flags=flags, fat32_layout=fat32_layout,
        **fields,  # type: ignore[arg-type]
    )
    _check_geometry(bs, device_bytes)
    return bs


def _check_scalars(bps: int, spc: int, reserved: int, nfats: int) -> None:
    if not _pow2(bps) or not 512 <= bps <= 4096:
        raise BadBootSector(f"bytes per sector {bps} is not a power of two in 512..4096")
    if not _pow2(spc) or spc > 128:
        raise BadBootSector(f"sectors per cluster {spc} is not a power of two in 1..128")
    if bps * spc > MAX_CLUSTER_BYTES:
        raise BadBootSector(f"cluster size {bps * spc} exceeds 64 KiB")
    if reserved == 0:
        raise BadBootSector("reserved sector count is 0 (the boot sector itself is reserved)")
    if not 1 <= nfats <= 2:
        raise BadBootSector(f"FAT count {nfats} is not 1 or 2")


def _check_geometry(bs: BootSector, device_bytes: int | None) -> None:
    if bs.total_sectors == 0:
        raise BadBootSector("total sector count is 0")
    if bs.fat_size == 0:
        raise BadBootSector("FAT size is 0")
    if bs.data_start >= bs.total_sectors or bs.cluster_count < 1:
        raise BadBootSector("no data region: reserved + FATs + root dir fill the volume")
    if device_bytes is not None and bs.total_sectors * bs.bytes_per_sector > device_bytes:
        raise TruncatedImage(
            f"BPB says {bs.total_sectors} sectors of {bs.bytes_per_sector} bytes, "
            f"device holds only {device_bytes} bytes (truncated image)")
    fat_bits = bs.fat_type
    needed = -(-(bs.cluster_count + 2) * fat_bits // 8)
    if bs.fat_size * bs.bytes_per_sector < needed:
        raise BadBootSector(f"FAT of {bs.fat_size} sectors cannot map {bs.cluster_count} clusters")
    if fat_bits == 32:
        _check_fat32(bs)
    else:
        if bs.fat32_layout:
            raise BadBootSector(
                f"FAT32-style BPB but only {bs.cluster_count} clusters (FAT32 needs >= 65525)")
        if bs.root_entries == 0:
            raise BadBootSector("FAT12/16 volume with a root directory of 0 entries")


def _check_fat32(bs: BootSector) -> None:
    if not bs.fat32_layout:
        raise BadBootSector(f"{bs.cluster_count} clusters means FAT32 but the BPB is FAT12/16")
    if bs.root_entries != 0:
        raise BadBootSector("FAT32 volume with a non-zero fixed root entry count")
    if not 2 <= bs.root_cluster <= bs.max_cluster:
        raise BadBootSector(f"FAT32 root cluster {bs.root_cluster} is outside the volume")
    if bs.fsinfo_sector >= bs.reserved_sectors or bs.backup_boot_sector >= bs.reserved_sectors:
        raise BadBootSector("FSInfo or backup boot sector lies outside the reserved area")
    if bs.active_fat is not None and bs.active_fat >= bs.num_fats:
        raise BadBootSector(f"active FAT {bs.active_fat} does not exist")


def pack_boot_sector(bs: BootSector, fs_label: bytes | None = None) -> bytes:
    """Build a whole boot sector (``bytes_per_sector`` long) from ``bs``."""
    out = bytearray(bs.bytes_per_sector)
    fat32 = bs.fat32_layout
    jump = b"\xeb\x58\x90" if fat32 else b"\xeb\x3c\x90"
    small = bs.total_sectors < 0x10000 and not fat32
    _COMMON.pack_into(
        out, 0, jump, bs.oem, bs.bytes_per_sector, bs.sectors_per_cluster, bs.reserved_sectors,
        bs.num_fats, bs.root_entries, bs.total_sectors if small else 0, bs.media,
        0 if fat32 else bs.fat_size, bs.sectors_per_track, bs.num_heads, bs.hidden_sectors,
        0 if small else bs.total_sectors)
    fst = fs_label or (b"FAT32   " if fat32 else f"FAT{bs.fat_type}   ".encode())
    if fat32:
        _EXT32_HEAD.pack_into(out, 36, bs.fat_size, bs.ext_flags, 0, bs.root_cluster,
                              bs.fsinfo_sector, bs.backup_boot_sector, bytes(12))
        _EXT32_TAIL.pack_into(out, 64, bs.drive_number, bs.flags, 0x29, bs.volume_id, bs.label, fst)
        code_at = 90
    else:
        _EXT16.pack_into(out, 36, bs.drive_number, bs.flags, 0x29, bs.volume_id, bs.label, fst)
        code_at = 62
    # Boot code: "int 18h" (no bootable OS: ask the BIOS for the next device), then halt.
    out[code_at:code_at + 3] = b"\xcd\x18\xf4"
    out[510:512] = b"\x55\xaa"
    return bytes(out)


def set_boot_dirty(sector: bytes, fat32: bool, dirty: bool) -> bytes:
    """Return ``sector`` with the BS_Reserved1 dirty bit set or cleared (rest untouched)."""
    out = bytearray(sector)
    at = 65 if fat32 else 37
    out[at] = (out[at] | BOOT_DIRTY_BIT) if dirty else (out[at] & ~BOOT_DIRTY_BIT & 0xFF)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class FsInfo:
    """FAT32 FSInfo hints: free cluster count and next-free hint (0xFFFFFFFF = unknown)."""

    free_count: int = FSINFO_UNKNOWN
    next_free: int = FSINFO_UNKNOWN
    valid: bool = True


def parse_fsinfo(data: bytes) -> FsInfo:
    """Parse an FSInfo sector; bad signatures give ``valid=False`` (a hint, never fatal)."""
    lead, = struct.unpack_from("<I", data, 0)
    struc, free, nxt = struct.unpack_from("<III", data, 484)
    trail, = struct.unpack_from("<I", data, 508)
    ok = (lead, struc, trail) == (FSINFO_LEAD_SIG, FSINFO_STRUC_SIG, FSINFO_TRAIL_SIG)
    return FsInfo(free, nxt, ok) if ok else FsInfo(valid=False)


def pack_fsinfo(info: FsInfo, sector_size: int) -> bytes:
    out = bytearray(sector_size)
    struct.pack_into("<I", out, 0, FSINFO_LEAD_SIG)
    struct.pack_into("<III", out, 484, FSINFO_STRUC_SIG, info.free_count, info.next_free)
    struct.pack_into("<I", out, 508, FSINFO_TRAIL_SIG)
    return bytes(out)
