"""MBR partition table parsing (pure: bytes in, partitions out).

Sector 0 of a disk is either a master boot record (four primary entries at
0x1BE and the 0x55AA signature) or, on a "superfloppy" such as a FAT image
made without a partition table, the file system's own boot sector, which
carries the same signature. Telling them apart matters: reading boot code as
partition entries would invent partitions. Sector 0 is taken as a FAT boot
sector when it starts with a jump (0xEB/0xE9) *and* carries plausible BPB
fields; otherwise it is an MBR only if every non-empty entry is sane (status
0x00/0x80, inside the disk, no overlaps). Anything else means "no partitions".
Old 63-sector (track-aligned) starts are ordinary and accepted.
"""

from __future__ import annotations

import struct
from itertools import pairwise

from drivers.protocol import Partition

TABLE_OFFSET = 0x1BE
ENTRY = struct.Struct("<B3sB3sII")  # status, CHS first, type, CHS last, LBA first, sectors
SIGNATURE = b"\x55\xaa"
_VALID_MEDIA = {0xF0, *range(0xF8, 0x100)}


def looks_like_fat_boot_sector(sector: bytes) -> bool:
    """A jump instruction plus a BPB whose fields have the values FAT requires."""
    if len(sector) < 512 or sector[0] not in (0xEB, 0xE9):
        return False
    bytes_per_sector = int.from_bytes(sector[11:13], "little")
    sectors_per_cluster = sector[13]
    reserved = int.from_bytes(sector[14:16], "little")
    num_fats = sector[16]
    media = sector[21]
    return (
        bytes_per_sector in (512, 1024, 2048, 4096)
        and sectors_per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved >= 1
        and num_fats in (1, 2)
        and media in _VALID_MEDIA
    )


def parse_mbr(sector: bytes, total_sectors: int) -> list[Partition]:
    """The primary partitions of sector 0, or ``[]`` when it is not a partition table."""
    if len(sector) < 512 or sector[510:512] != SIGNATURE or looks_like_fat_boot_sector(sector):
        return []
    found: list[Partition] = []
    for index in range(4):
        status, _, ptype, _, start, sectors = ENTRY.unpack_from(sector, TABLE_OFFSET + 16 * index)
        if ptype == 0 and sectors == 0:
            continue  # an empty slot
        if status not in (0x00, 0x80) or ptype == 0 or sectors == 0:
            return []
        if start < 1 or start + sectors > total_sectors:
            return []
        found.append(Partition(index + 1, start, sectors, ptype, status == 0x80))
    return [] if _overlapping(found) else found


def _overlapping(parts: list[Partition]) -> bool:
    ordered = sorted(parts, key=lambda p: p.start)
    return any(a.start + a.sectors > b.start for a, b in pairwise(ordered))


def build_mbr(partitions: list[tuple[int, int, int]], *, boot_code: bytes = b"") -> bytes:
    """A 512-byte MBR with up to four ``(start, sectors, type)`` entries (for tests and tools)."""
    if len(partitions) > 4 or len(boot_code) > TABLE_OFFSET:
        raise ValueError("an MBR holds at most four entries and 446 bytes of boot code")
    sector = bytearray(512)
    sector[: len(boot_code)] = boot_code
    for index, (start, sectors, ptype) in enumerate(partitions):
        chs = b"\xfe\xff\xff"  # "use LBA": the CHS fields are meaningless on modern disks
        ENTRY.pack_into(sector, TABLE_OFFSET + 16 * index, 0, chs, ptype, chs, start, sectors)
    sector[510:512] = SIGNATURE
    return bytes(sector)
