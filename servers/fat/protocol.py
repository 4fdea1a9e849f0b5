"""What the FAT server adds to the file-system protocol (``servers/fs/protocol.py``).

The generic replies carry server-specific facts in their ``native`` map; the FAT
server fills these keys.
"""

from __future__ import annotations

from typing import Final

SHORT_NAME: Final = "short_name"  # FsInfo.native: the 8.3 name ("LONGFI~1.TXT")
FIRST_CLUSTER: Final = "first_cluster"  # FsInfo.native: first cluster of the chain (0: none)
FAT_TYPE: Final = "fat_type"  # FsVolume.native: 12, 16 or 32


def entry_native(short_name: str, first_cluster: int) -> dict[str, str | int]:
    """The native facts of one directory entry."""
    return {SHORT_NAME: short_name, FIRST_CLUSTER: first_cluster}
