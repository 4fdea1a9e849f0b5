"""Directory entries: the 32-byte short entry, DOS timestamps, and directory parsing.

Pure code. A directory is parsed into :class:`DirSlot` records, each a live short
entry with the long name assembled from the LFN entries before it. LFN entries
that do not chain correctly (wrong ordinal, wrong checksum, no short entry after
them) are *orphans*: they are ignored and counted, and the short entry is shown
under its short name, as Windows and Linux do.
"""

from __future__ import annotations

import bisect
import struct
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from servers.fat.names import (
    ATTR_LFN,
    LFN_LAST,
    decode_lfn_units,
    lfn_checksum,
    lfn_fragment,
    short_display,
)

ENTRY_SIZE = 32
ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
END_MARK = 0x00
DELETED_MARK = 0xE5
DOT_NAME = b".          "
DOTDOT_NAME = b"..         "
MAX_DIR_ENTRIES = 65536  # the FAT spec caps a directory at 2 MiB of entries
_SHORT = struct.Struct("<11sBBBHHHHHHHI")


@dataclass(frozen=True, slots=True)
class ShortEntry:
    """A 32-byte short (8.3) directory entry."""

    name: bytes
    attr: int = ATTR_ARCHIVE
    nt_flags: int = 0
    ctime_cs: int = 0  # creation time 10 ms units, 0..199 (adds the odd second)
    ctime: int = 0
    cdate: int = 0
    adate: int = 0
    cluster: int = 0
    mtime: int = 0
    mdate: int = 0
    size: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> ShortEntry:
        (name, attr, nt, cs, ct, cd, ad, hi, mt, md, lo, size) = _SHORT.unpack(raw[:ENTRY_SIZE])
        return cls(name, attr, nt, cs, ct, cd, ad, hi << 16 | lo, mt, md, size)

    def pack(self) -> bytes:
        return _SHORT.pack(self.name, self.attr, self.nt_flags, self.ctime_cs, self.ctime,
                           self.cdate, self.adate, self.cluster >> 16, self.mtime, self.mdate,
                           self.cluster & 0xFFFF, self.size)

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & ATTR_DIRECTORY)

    @property
    def is_label(self) -> bool:
        return self.attr & ATTR_VOLUME_ID != 0 and self.attr & 0x3F != ATTR_LFN

    @property
    def is_dot(self) -> bool:
        return self.name in (DOT_NAME, DOTDOT_NAME)

    def with_(self, **changes: int | bytes) -> ShortEntry:
        return replace(self, **changes)  # type: ignore[arg-type]


# -- timestamps ------------------------------------------------------------------
def encode_datetime(dt: datetime) -> tuple[int, int, int]:
    """(date, time, centiseconds) for a naive local datetime, clamped to 1980..2107."""
    if dt.year < 1980:
        dt = datetime(1980, 1, 1)
    elif dt.year > 2107:
        dt = datetime(2107, 12, 31, 23, 59, 59)
    date = (dt.year - 1980) << 9 | dt.month << 5 | dt.day
    tm = dt.hour << 11 | dt.minute << 5 | dt.second // 2
    cs = (dt.second % 2) * 100 + dt.microsecond // 10000
    return date, tm, cs


def decode_datetime(date: int, tm: int = 0, cs: int = 0) -> datetime | None:
    """The datetime of DOS date/time/centiseconds, or None when the fields are invalid."""
    try:
        base = datetime(1980 + (date >> 9), (date >> 5) & 0xF, date & 0x1F,
                        tm >> 11, (tm >> 5) & 0x3F, min((tm & 0x1F) * 2, 59))
    except ValueError:
        return None
    if cs >= 200:
        cs = 0
    extra_s, centis = divmod(cs, 100)
    return base.replace(second=min(base.second + extra_s, 59), microsecond=centis * 10000)


def dos_now(ts: float | None = None) -> tuple[int, int, int]:
    """(date, time, centiseconds) in local time for an epoch timestamp (default: now)."""
    return encode_datetime(datetime.fromtimestamp(time.time() if ts is None else ts))


def dos_to_epoch(date: int, tm: int = 0, cs: int = 0) -> float:
    dt = decode_datetime(date, tm, cs)
    return 0.0 if dt is None else dt.timestamp()


# -- directories -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DirSlot:
    """A live entry: its short entry index, the index of its first LFN entry, and names."""

    index: int
    first_index: int
    entry: ShortEntry
    long_name: str | None

    @property
    def short_name(self) -> str:
        return short_display(self.entry.name, self.entry.nt_flags)

    @property
    def name(self) -> str:
        return self.long_name if self.long_name is not None else self.short_name

@dataclass(slots=True)
class DirListing:
    """A parsed directory: live slots in index order, and indexes built on first use.

    The FAT server keeps one per directory and updates it in place on a create
    (:meth:`add`), so a create in a directory of n entries costs no reparse, no
    rebuilt name index and no scan for free entries when none was deleted.
    """

    slots: list[DirSlot] = field(default_factory=list)
    end: int = 0  # index of the end marker (entries from here on are free)
    orphan_lfn: int = 0
    bad_checksum: int = 0
    _by_name: dict[str, DirSlot] | None = None
    deleted: int = 0  # deleted entries before ``end``: 0 means new entries go at ``end``
    _short_names: set[bytes] | None = None

    def short_names(self) -> set[bytes]:
        """The 11-byte short names in use (built once, then kept by :meth:`add`); read only."""
        if self._short_names is None:
            self._short_names = {s.entry.name for s in self.slots}
        return self._short_names

    def slot_at(self, index: int) -> DirSlot | None:
        """The live slot whose short entry is at ``index`` (binary search)."""
        k = bisect.bisect_left(self.slots, index, key=_slot_index)
        if k < len(self.slots) and self.slots[k].index == index:
            return self.slots[k]
        return None

    def add(self, slot: DirSlot, end: int, reused: int) -> None:
        """A new entry set was written: ``slot`` is its parsed form, ``end`` the new end
        marker, ``reused`` how many deleted entries before the old end it took over."""
        bisect.insort(self.slots, slot, key=_slot_index)
        self.end = end
        self.deleted -= reused
        if self._short_names is not None:
            self._short_names.add(slot.entry.name)
        if self._by_name is not None and not (slot.entry.is_label or slot.entry.is_dot):
            names = [short_display(slot.entry.name).upper()]
            if slot.long_name is not None:
                names.append(slot.long_name.upper())
            for name in names:  # the first entry of a name wins, as in a fresh index
                held = self._by_name.get(name)
                if held is None or held.index > slot.index:
                    self._by_name[name] = slot

    def find(self, wanted_upper: str) -> DirSlot | None:
        """The first live file or directory entry whose long or short name matches.

        The index is built on first use: a parsed directory is looked up many times.
        """
        if self._by_name is None:
            index: dict[str, DirSlot] = {}
            for slot in self.slots:
                if slot.entry.is_label or slot.entry.is_dot:
                    continue
                if slot.long_name is not None:
                    index.setdefault(slot.long_name.upper(), slot)
                index.setdefault(short_display(slot.entry.name).upper(), slot)
            self._by_name = index
        return self._by_name.get(wanted_upper)

    def update_entry(self, index: int, entry: ShortEntry) -> None:
        """The short entry at ``index`` was rewritten (size, times, cluster): same names.

        Keeps a parsed directory true without parsing it again.
        """
        k = bisect.bisect_left(self.slots, index, key=_slot_index)
        if k == len(self.slots) or self.slots[k].index != index:
            return
        slot = self.slots[k]
        new = DirSlot(slot.index, slot.first_index, entry, slot.long_name)
        self.slots[k] = new
        if self._by_name is not None:
            names = [short_display(entry.name).upper()]
            if slot.long_name is not None:
                names.append(slot.long_name.upper())
            for name in names:
                if self._by_name.get(name) is slot:
                    self._by_name[name] = new


def _slot_index(slot: DirSlot) -> int:
    return slot.index


@dataclass(slots=True)
class _Pending:
    first: int
    checksum: int
    expect: int
    parts: list[bytes]


def parse_directory(data: bytes | bytearray) -> DirListing:
    """Parse a directory's raw bytes; bounded by its length."""
    out = DirListing(end=len(data) // ENTRY_SIZE)
    pending: _Pending | None = None
    for i in range(len(data) // ENTRY_SIZE):
        raw = bytes(data[i * ENTRY_SIZE:(i + 1) * ENTRY_SIZE])
        if raw[0] == END_MARK:
            out.end = i
            break
        if raw[0] == DELETED_MARK:
            out.orphan_lfn += pending is not None
            out.deleted += 1
            pending = None
            continue
        if raw[11] & 0x3F == ATTR_LFN:
            pending = _lfn_step(pending, raw, i, out)
            continue
        entry = ShortEntry.unpack(raw)
        long_name, first = None, i
        if pending is not None:
            if pending.expect == 0 and pending.checksum == lfn_checksum(entry.name):
                long_name = decode_lfn_units(b"".join(reversed(pending.parts)))
                first = pending.first
            elif pending.expect == 0:
                out.bad_checksum += 1
            else:
                out.orphan_lfn += 1
            pending = None
        out.slots.append(DirSlot(i, first, entry, long_name))
    if pending is not None:
        out.orphan_lfn += 1
    return out


def _lfn_step(pending: _Pending | None, raw: bytes, i: int, out: DirListing) -> _Pending | None:
    ordinal, checksum, text, last = lfn_fragment(raw)
    if last and 1 <= ordinal <= 20:
        out.orphan_lfn += pending is not None
        return _Pending(i, checksum, ordinal - 1, [text])
    if pending is not None and ordinal == pending.expect and ordinal >= 1 and (
            checksum == pending.checksum) and not raw[0] & LFN_LAST:
        pending.parts.append(text)
        pending.expect -= 1
        return pending
    out.orphan_lfn += 1
    return None


def find_free_run(data: bytes | bytearray, count: int, end: int) -> int | None:
    """Index of the first run of ``count`` free entries (deleted, or past the end marker)."""
    total = len(data) // ENTRY_SIZE
    run_start, run_len = 0, 0
    for i in range(min(end, total)):
        if data[i * ENTRY_SIZE] == DELETED_MARK:
            if run_len == 0:
                run_start = i
            run_len += 1
            if run_len == count:
                return run_start
        else:
            run_len = 0
    start = end - run_len if run_len else end
    return start if start + count <= total else None
