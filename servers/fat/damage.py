"""What the FAT volume does with each kind of damaged image (mirrors ``docs/fat.md``).

Three outcomes exist: the volume is *refused* at mount (a typed BadBootSector,
errno EIO, whose message names the bad field); it *mounts* and only the damaged
file or directory gives EIO (BadChain / DirectoryLoop); or the damage is
*tolerated* and reported in ``FatVolume.problems`` (and repaired by a
read-write mount where that is safe). Every on-disk walk is bounded, so no
case can hang. ``tests/fat/test_corrupt.py`` has one test per row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Damage:
    case: str
    outcome: str  # "refuse" | "eio" | "tolerate"
    behaviour: str


DAMAGE_TABLE: tuple[Damage, ...] = (
    Damage("cyclic_chain", "eio", "mount ok; read/extents/set_size of the file: BadChain "
           "'cyclic cluster chain'; check() reports it"),
    Damage("chain_into_free", "eio", "mount ok; the file gives BadChain 'runs into free cluster'"),
    Damage("chain_into_reserved", "eio", "mount ok; the file gives BadChain 'reserved/out-of-range'"),
    Damage("start_beyond_volume", "eio", "mount ok; stat works; data access gives BadChain "
           "'outside the data region'"),
    Damage("chain_shorter_than_size", "tolerate", "mount ok; open and stat clip the size to "
           "the chain before anything is allocated; problems says so; reads return the "
           "chain's bytes; check() reports it"),
    Damage("cross_linked", "tolerate", "mount ok; both files read the shared clusters; check() "
           "reports 'cross-linked'"),
    Damage("directory_loop", "eio", "mount ok; the parent lists the entry; entering it gives "
           "DirectoryLoop; check() reports it"),
    Damage("bad_bytes_per_sector", "refuse", "BadBootSector 'bytes per sector'"),
    Damage("bad_sectors_per_cluster", "refuse", "BadBootSector 'sectors per cluster'"),
    Damage("zero_fat_count", "refuse", "BadBootSector 'FAT count'"),
    Damage("zero_reserved_sectors", "refuse", "BadBootSector 'reserved sector count'"),
    Damage("missing_signature", "refuse", "BadBootSector 'signature 0x55AA'"),
    Damage("truncated_image", "refuse", "TruncatedImage 'truncated image'"),
    Damage("differing_fat_copies", "tolerate", "mount ok using FAT 0; problems names the copy; "
           "a read-write mount rewrites the differing sectors of the other copy"),
    Damage("wrong_fsinfo_free_count", "tolerate", "mount ok; free count recomputed from the "
           "FAT; problems says so; read-write unmount writes the right value"),
    Damage("dirty_flag_set", "tolerate", "mount ok; was_dirty and a problem entry; a clean "
           "read-write unmount clears the flag"),
    Damage("orphan_lfn", "tolerate", "the entry is listed under its short name; check() counts "
           "the orphans"),
    Damage("bad_lfn_checksum", "tolerate", "the entry is listed under its short name; check() "
           "reports the bad checksum"),
)
