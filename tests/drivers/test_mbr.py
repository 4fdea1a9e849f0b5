"""MBR parsing: real tables are found, FAT boot sectors and garbage are not tables."""

from __future__ import annotations

import struct

from drivers.mbr import build_mbr, looks_like_fat_boot_sector, parse_mbr
from drivers.protocol import Partition

TOTAL = 1 << 20


def _fat_boot_sector() -> bytearray:
    sector = bytearray(build_mbr([(1, 10, 0x06)]))
    sector[0:3] = b"\xeb\x58\x90"
    struct.pack_into("<HBHB", sector, 11, 512, 8, 32, 2)
    sector[21] = 0xF8
    return sector


def test_primary_partitions_with_old_63_sector_start() -> None:
    mbr = build_mbr([(63, 1000, 0x0B), (2048, 4096, 0x83)])
    assert parse_mbr(mbr, TOTAL) == [
        Partition(1, 63, 1000, 0x0B, False),
        Partition(2, 2048, 4096, 0x83, False),
    ]


def test_bootable_flag_and_empty_slots() -> None:
    mbr = bytearray(build_mbr([(0, 0, 0), (2048, 100, 0x0C)]))
    mbr[0x1BE + 16] = 0x80
    assert parse_mbr(bytes(mbr), TOTAL) == [Partition(2, 2048, 100, 0x0C, True)]


def test_no_signature_means_no_table() -> None:
    mbr = bytearray(build_mbr([(2048, 100, 0x0C)]))
    mbr[510:512] = b"\0\0"
    assert parse_mbr(bytes(mbr), TOTAL) == []


def test_fat_boot_sector_is_not_a_table() -> None:
    sector = _fat_boot_sector()
    assert looks_like_fat_boot_sector(bytes(sector))
    assert parse_mbr(bytes(sector), TOTAL) == []


def test_jump_byte_alone_does_not_make_a_boot_sector() -> None:
    """GRUB-style MBR code starts with a jump too; without a valid BPB it is still an MBR."""
    mbr = bytearray(build_mbr([(2048, 100, 0x83)]))
    mbr[0:2] = b"\xeb\x63"
    assert not looks_like_fat_boot_sector(bytes(mbr))
    assert parse_mbr(bytes(mbr), TOTAL) == [Partition(1, 2048, 100, 0x83, False)]


def test_invalid_entries_void_the_table() -> None:
    overlapping = build_mbr([(2048, 100, 0x83), (2100, 100, 0x83)])
    beyond = build_mbr([(TOTAL - 10, 100, 0x83)])
    at_zero = build_mbr([(0, 100, 0x83)])
    bad_status = bytearray(build_mbr([(2048, 100, 0x83)]))
    bad_status[0x1BE] = 0x12
    for sector in (overlapping, beyond, at_zero, bytes(bad_status), b"short"):
        assert parse_mbr(sector, TOTAL) == []
