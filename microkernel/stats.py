"""System-wide counters and their immutable snapshot.

The counters are plain integer attributes on one object shared by every
server of a booted system, because the servers run in one process and an
attribute increment is the cheapest thing Python can do on a hot path.
``statistics()`` (trio style) returns a frozen snapshot that can be compared,
encoded to JSON (``--stats FILE``) and kept after the system is gone.
"""

from __future__ import annotations

from collections import Counter

import msgspec

#: The scalar counters the README lists, in the order reports show them.
SCALAR_COUNTERS = (
    "bytes_copied",
    "bytes_zero_copy",
    "messages_total",
    "syscalls",
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "disk_read_bytes",
    "disk_write_bytes",
    "partial_sector_writes",
    "dma_bounce_bytes",
    "frames_free",
    "refusals",
)


REFUSAL_TYPES = 256  # distinct message types counted in refusals_by_type
OTHER_TYPES = "(other)"


class Statistics(msgspec.Struct, frozen=True, kw_only=True):
    """Immutable snapshot of the counters the README lists (plus breakdowns)."""

    bytes_copied: int = 0
    bytes_zero_copy: int = 0
    messages_total: int = 0
    messages_by_type: dict[str, int] = msgspec.field(default_factory=dict)
    syscalls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    partial_sector_writes: int = 0
    dma_bounce_bytes: int = 0
    frames_free: int = 0
    copies_by_reason: dict[str, int] = msgspec.field(default_factory=dict)
    syscalls_by_type: dict[str, int] = msgspec.field(default_factory=dict)
    refusals: int = 0  # messages the router refused (capability table, forged replies)
    refusals_by_type: dict[str, int] = msgspec.field(default_factory=dict)
    volume_repairs: int = 0  # what mount repair fixed on volumes left dirty by a crash

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    def delta(self, earlier: Statistics) -> Statistics:
        """Counters accumulated since ``earlier`` (frames_free is kept as the current level)."""
        values: dict[str, object] = {}
        for name in self.__struct_fields__:
            now, then = getattr(self, name), getattr(earlier, name)
            if name == "frames_free":
                values[name] = now
            elif isinstance(now, dict):
                values[name] = {k: v - then.get(k, 0) for k, v in now.items() if v - then.get(k, 0)}
            else:
                values[name] = now - then
        return Statistics(**values)  # type: ignore[arg-type]


class Counters:
    """Mutable counters; servers increment attributes directly."""

    __slots__ = (
        "bytes_copied",
        "bytes_zero_copy",
        "cache_evictions",
        "cache_hits",
        "cache_misses",
        "copies_by_reason",
        "disk_read_bytes",
        "disk_write_bytes",
        "dma_bounce_bytes",
        "messages_by_type",
        "messages_total",
        "partial_sector_writes",
        "refusals",
        "refusals_by_type",
        "syscalls",
        "syscalls_by_type",
        "volume_repairs",
    )

    def __init__(self) -> None:
        self.bytes_copied = 0
        self.bytes_zero_copy = 0
        self.messages_total = 0
        self.messages_by_type: Counter[str] = Counter()
        self.syscalls = 0
        self.syscalls_by_type: Counter[str] = Counter()
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_evictions = 0
        self.disk_read_bytes = 0
        self.disk_write_bytes = 0
        self.partial_sector_writes = 0
        self.dma_bounce_bytes = 0
        self.copies_by_reason: Counter[str] = Counter()
        self.refusals = 0
        self.refusals_by_type: Counter[str] = Counter()
        self.volume_repairs = 0

    def count_refusal(self, type_: str) -> None:
        """Count a refused message; type names a sender made up share one bucket past a bound."""
        self.refusals += 1
        by_type = self.refusals_by_type
        if type_ not in by_type and (len(by_type) >= REFUSAL_TYPES or len(type_) > 64):
            type_ = OTHER_TYPES
        by_type[type_] += 1

    def count_copy(self, n: int, reason: str) -> None:
        self.bytes_copied += n
        self.copies_by_reason[reason] += n

    def snapshot(self, *, frames_free: int) -> Statistics:
        return Statistics(
            bytes_copied=self.bytes_copied,
            bytes_zero_copy=self.bytes_zero_copy,
            messages_total=self.messages_total,
            messages_by_type=dict(self.messages_by_type),
            syscalls=self.syscalls,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            cache_evictions=self.cache_evictions,
            disk_read_bytes=self.disk_read_bytes,
            disk_write_bytes=self.disk_write_bytes,
            partial_sector_writes=self.partial_sector_writes,
            dma_bounce_bytes=self.dma_bounce_bytes,
            frames_free=frames_free,
            copies_by_reason=dict(self.copies_by_reason),
            syscalls_by_type=dict(self.syscalls_by_type),
            refusals=self.refusals,
            refusals_by_type=dict(self.refusals_by_type),
            volume_repairs=self.volume_repairs,
        )
