"""The file allocation table held in memory: entries, bounded chains, allocation.

Pure code. The table keeps the raw bytes of one FAT copy (so dirty sectors can be
written back to every copy), a decoded list of entries (so chain walks are plain
list indexing) and a free map, one byte per cluster (1 = free), kept in step with
every change: allocation searches it with ``bytearray.find`` from the next-free
hint, in C, and stops at the first fit, so it never walks the whole FAT in Python.
Every chain walk is bounded by the cluster count and detects cycles, so a damaged
FAT can never hang a caller.
"""

from __future__ import annotations

import bisect
import itertools
import sys
from collections.abc import Iterable

from servers.fat.errors import BadChain, NoSpace

FREE = 0
_MASK = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}
# FAT[1] clean-shutdown / no-hard-error bits (1 = clean / no error); FAT12 has none.
_CLEAN_BIT = {16: 0x8000, 32: 0x08000000}
_HARD_ERROR_BIT = {16: 0x4000, 32: 0x04000000}


class FatTable:
    """One logical FAT: decoded entries plus the raw bytes and the set of dirty sectors."""

    def __init__(self, raw: bytes, fat_type: int, max_cluster: int, sector_size: int) -> None:
        if fat_type not in _MASK:
            raise ValueError(f"FAT type {fat_type}")
        self.fat_type = fat_type
        self.max_cluster = max_cluster
        self.sector_size = sector_size
        self.mask = _MASK[fat_type]
        self.eoc_min = self.mask & ~7  # 0xFF8 / 0xFFF8 / 0x0FFFFFF8
        self.bad = self.eoc_min - 1
        self.eoc = self.mask
        self._raw = bytearray(raw)
        self._entries = self._decode_all(max_cluster + 1)
        self._dirty: set[int] = set()
        # Cluster n is free iff _free[n] == 1 (entries 0 and 1 are never free).
        self._free = bytearray(2) + bytes([v == FREE for v in self._entries[2:]])
        self.free_count = self._free.count(1)
        self.next_free = 2
        self.version = 0  # bumped by every change, so walks of the table can be cached
        self.freed: set[int] = set()  # clusters freed since the owner last took this set
        # With ``quarantine`` on, a freed cluster is not handed out again until the owner
        # says the free is on the disk (``release_held``): the disk may still show the old
        # file holding it, which must not show a new file's data.
        self.quarantine = False
        self.held: set[int] = set()

    # -- raw encoding -----------------------------------------------------
    def _decode_all(self, count: int) -> list[int]:
        """Entries 0..count-1 at mount: FAT16/32 by one native cast of the raw bytes
        (a mount of a big volume decodes in C, not entry by entry)."""
        width = {16: 2, 32: 4}.get(self.fat_type)
        if width is None or sys.byteorder != "little" or len(self._raw) < width * count:
            return [self._decode(n) for n in range(count)]
        values = memoryview(self._raw)[: width * count].cast("H" if width == 2 else "I").tolist()
        if width == 4 and values and max(values) > 0x0FFFFFFF:
            return [v & 0x0FFFFFFF for v in values]  # the 4 reserved bits are not the entry
        return values

    def _decode(self, n: int) -> int:
        raw = self._raw
        if self.fat_type == 12:
            at = n * 3 // 2
            pair = raw[at] | raw[at + 1] << 8
            return (pair >> 4) if n & 1 else (pair & 0xFFF)
        if self.fat_type == 16:
            return raw[2 * n] | raw[2 * n + 1] << 8
        return int.from_bytes(raw[4 * n:4 * n + 4], "little") & 0x0FFFFFFF

    def _encode(self, n: int, value: int) -> None:
        raw = self._raw
        if self.fat_type == 12:
            at = n * 3 // 2
            pair = raw[at] | raw[at + 1] << 8
            pair = (pair & 0x000F) | value << 4 if n & 1 else (pair & 0xF000) | value
            raw[at], raw[at + 1] = pair & 0xFF, pair >> 8
            self._touch(at, 2)
        elif self.fat_type == 16:
            raw[2 * n:2 * n + 2] = value.to_bytes(2, "little")
            self._touch(2 * n, 2)
        else:
            old = int.from_bytes(raw[4 * n:4 * n + 4], "little")
            # The upper 4 bits are reserved: preserve whatever is on disk.
            raw[4 * n:4 * n + 4] = ((old & 0xF0000000) | value).to_bytes(4, "little")
            self._touch(4 * n, 4)

    def _touch(self, offset: int, length: int) -> None:
        self._dirty.add(offset // self.sector_size)
        self._dirty.add((offset + length - 1) // self.sector_size)

    # -- entries ------------------------------------------------------------
    def get(self, n: int) -> int:
        return self._entries[n]

    def set(self, n: int, value: int) -> None:
        """Set entry ``n`` (0 and 1 are the reserved media/flags entries)."""
        value &= self.mask
        self.version += 1
        old = self._entries[n]
        if n >= 2:
            self.free_count += (value == FREE) - (old == FREE)
            if value == FREE and old != FREE:
                self.freed.add(n)
            self._free[n] = value == FREE
            if value == FREE and old != FREE and self.quarantine:
                self.held.add(n)
                self._free[n] = False
            elif value != FREE:
                self.held.discard(n)
        self._entries[n] = value
        self._encode(n, value)

    def is_eoc(self, value: int) -> bool:
        return value >= self.eoc_min

    # -- clean-shutdown flag in FAT[1] ----------------------------------------
    @property
    def clean(self) -> bool | None:
        """FAT[1] clean-shutdown bit; None for FAT12, which has no such bit."""
        bit = _CLEAN_BIT.get(self.fat_type)
        return None if bit is None else bool(self._entries[1] & bit)

    @property
    def hard_error(self) -> bool:
        bit = _HARD_ERROR_BIT.get(self.fat_type)
        return bit is not None and not self._entries[1] & bit

    def set_clean(self, clean: bool) -> None:
        bit = _CLEAN_BIT.get(self.fat_type)
        if bit is not None:
            value = self._entries[1]
            self.set(1, value | bit if clean else value & ~bit)

    # -- chains -------------------------------------------------------------
    def check_cluster(self, cluster: int, what: str = "cluster") -> None:
        if not 2 <= cluster <= self.max_cluster:
            raise BadChain(f"{what} {cluster} is outside the data region 2..{self.max_cluster}")

    def chain(self, start: int, limit: int | None = None) -> list[int]:
        """The clusters of the chain from ``start``; at most ``limit`` are followed.

        Raises BadChain for a start or link outside 2..max, a link to a free, bad or
        reserved cluster, or a cycle. The walk is :meth:`chain_runs`'s, bounded alike.
        """
        runs = self.chain_runs(start, limit)
        return list(itertools.chain.from_iterable(range(c, c + n) for c, n in runs))

    def chain_runs(self, start: int, limit: int | None = None) -> list[tuple[int, int]]:
        """The chain from ``start`` as (first cluster, count) runs; at most ``limit`` clusters.

        A run is a stretch of clusters each linked to the next number, found by
        comparing slices of the decoded entries against ranges (in C), so a
        contiguous file costs a few slice compares, not a Python step per cluster.
        Errors are :meth:`chain`'s. Cycles: a stretch never revisits itself (its
        links go up by one), so a cycle is a jump into, or a stretch running into,
        an earlier run; the visited runs are kept sorted and disjoint and every new
        one is checked against them. At most ``max_cluster`` clusters are followed.
        """
        self.check_cluster(start, "start cluster")
        entries = self._entries
        bound = self.max_cluster if limit is None else min(limit, self.max_cluster)
        runs: list[tuple[int, int]] = []
        firsts: list[int] = []  # visited runs, sorted by first cluster
        ends: list[int] = []  # their exclusive ends, in the same order
        total = 0
        cur = start
        while True:
            n = 1 + self._stretch(cur, min(bound - total - 1, self.max_cluster - cur))
            at = bisect.bisect_right(firsts, cur)
            if at < len(firsts) and firsts[at] < cur + n:
                raise BadChain(f"cyclic cluster chain: {firsts[at] - 1} -> {firsts[at]} "
                               f"(started at {start})")
            firsts.insert(at, cur)
            ends.insert(at, cur + n)
            runs.append((cur, n))
            total += n
            last = cur + n - 1
            if total >= bound:
                break
            nxt = entries[last]
            if nxt >= self.eoc_min:
                return runs
            self._check_link(last, nxt)
            at = bisect.bisect_right(firsts, nxt) - 1
            if at >= 0 and nxt < ends[at]:
                raise BadChain(f"cyclic cluster chain: {last} -> {nxt} (started at {start})")
            cur = nxt
        if limit is None and not self.is_eoc(entries[last]):
            raise BadChain(f"cluster chain from {start} longer than the volume (cycle)")
        return runs

    def _stretch(self, cur: int, most: int) -> int:
        """How many clusters from ``cur`` on link each to the next number (at most ``most``).

        Galloping slice compares: the step doubles while whole slices match and
        halves on a mismatch, so a stretch of n clusters costs O(log n) compares.
        """
        entries = self._entries
        done, step = 0, 8
        while step and done < most:
            k = min(step, most - done)
            at = cur + done
            if entries[at:at + k] == list(range(at + 1, at + 1 + k)):
                done += k
                step *= 2
            else:
                step //= 2
        return done

    def valid_prefix(self, start: int) -> tuple[list[int], str | None]:
        """The chain from ``start`` up to its first bad link, and what was wrong (None: intact).

        For repair: a chain cut short by a link to a free or out-of-range cluster
        keeps the clusters before it. Bounded like :meth:`chain`.
        """
        try:
            return self.chain(start), None
        except BadChain as exc:
            why = exc.strerror or str(exc)
        out: list[int] = []
        seen: set[int] = set()
        cur = start
        while 2 <= cur <= self.max_cluster and cur not in seen and self._entries[cur] != FREE:
            out.append(cur)
            seen.add(cur)
            nxt = self._entries[cur]
            if nxt >= self.eoc_min or nxt == self.bad:
                break
            cur = nxt
        return out, why

    def _check_link(self, cur: int, nxt: int) -> None:
        if nxt == FREE:
            raise BadChain(f"cluster chain runs into free cluster (at {cur})")
        if nxt == self.bad:
            raise BadChain(f"cluster chain runs into a bad cluster (after {cur})")
        if not 2 <= nxt <= self.max_cluster:
            raise BadChain(f"cluster {cur} links to reserved/out-of-range value {nxt:#x}")

    def runs(self, clusters: Iterable[int]) -> list[tuple[int, int]]:
        """Merge a cluster list into (first cluster, count) runs of consecutive numbers."""
        out: list[tuple[int, int]] = []
        for c in clusters:
            if out and out[-1][0] + out[-1][1] == c:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((c, 1))
        return out

    # -- allocation -------------------------------------------------------------
    @property
    def available(self) -> int:
        """Free clusters that may be allocated now (free minus those held in quarantine)."""
        return self.free_count - len(self.held)

    def release_held(self) -> None:
        """The frees are durable: the held clusters may be allocated again."""
        for n in self.held:
            if self._entries[n] == FREE:
                self._free[n] = True
        self.held.clear()

    @property
    def has_unwritten(self) -> bool:
        """Changed sectors not yet handed to the owner's writes (``dirty_runs``)."""
        return bool(self._dirty)

    def allocate(self, count: int, after: int | None = None, *, link: bool = True) -> list[int]:
        """Allocate ``count`` clusters as one linked chain (EOC at the end); return them.

        Preference: the clusters right after ``after`` (a file growing in place), then
        the first free run of the full length at or after the next-free hint
        (wrapping), then the largest free runs. ``after``, if given, is linked to the
        new clusters unless ``link`` is False (the caller links it once the new
        chain is on disk). Nothing changes when there is not enough space.
        """
        if count <= 0:
            return []
        if count > self.available:
            raise NoSpace(f"need {count} clusters, {self.available} free"
                          + (f" ({len(self.held)} freed, not yet on the disk)" if self.held
                             else ""))
        picked = self._pick(count, after)
        for a, b in itertools.pairwise(picked):
            self.set(a, b)
        self.set(picked[-1], self.eoc)
        if after is not None and link:
            self.set(after, picked[0])
        self.next_free = picked[-1] + 1 if picked[-1] < self.max_cluster else 2
        return picked

    def _pick(self, count: int, after: int | None) -> list[int]:
        if after is not None and self._free_span(after + 1, count):
            return list(range(after + 1, after + 1 + count))
        start = self._first_fit(count)
        if start is not None:
            return list(range(start, start + count))
        picked: list[int] = []  # no run is long enough: the largest runs first
        for first, length in sorted(self.free_runs(self.next_free), key=lambda r: -r[1]):
            take = min(length, count - len(picked))
            picked.extend(range(first, first + take))
            if len(picked) == count:
                break
        return picked

    def _first_fit(self, count: int) -> int | None:
        """Start of the first free run of ``count`` clusters from the hint (wrapping)."""
        hint = self.next_free if 2 <= self.next_free <= self.max_cluster else 2
        want = b"\1" * count
        at = self._free.find(want, hint)
        if at < 0:  # wrapped: a run may straddle the hint
            at = self._free.find(want, 2, min(hint + count - 1, self.max_cluster + 1))
        return None if at < 0 else at

    def _free_span(self, start: int, count: int) -> bool:
        end = start + count
        return end - 1 <= self.max_cluster and self._free.find(b"\1" * count, start, end) == start

    def free_runs(self, hint: int = 2) -> list[tuple[int, int]]:
        """All free runs as (start, length), in scan order from ``hint`` (wrapping).

        Walks the free map with ``find``: the cost is per run, not per cluster.
        """
        hint = hint if 2 <= hint <= self.max_cluster else 2
        free = self._free
        out: list[tuple[int, int]] = []
        for lo, hi in ((hint, self.max_cluster + 1), (2, hint)):
            c = free.find(1, lo, hi)
            while c >= 0:
                end = free.find(0, c, hi)
                end = hi if end < 0 else end
                out.append((c, end - c))
                c = free.find(1, end, hi)
        return out

    def free_chain(self, start: int) -> int:
        """Free every cluster of the chain from ``start``; return how many were freed."""
        clusters = self.chain(start)
        for c in clusters:
            self.set(c, FREE)
        return len(clusters)

    def truncate_chain(self, clusters: list[int], keep: int) -> None:
        """Keep the first ``keep`` clusters of ``clusters`` (an already walked chain)."""
        if keep > 0:
            self.set(clusters[keep - 1], self.eoc)
        for c in clusters[keep:]:
            self.set(c, FREE)

    def recount_free(self) -> int:
        """The free count from the entries themselves (an audit of the kept count and map)."""
        self.free_count = sum(1 for v in self._entries[2:] if v == FREE)
        return self.free_count

    # -- write-back -------------------------------------------------------------
    @property
    def raw(self) -> bytes:
        return bytes(self._raw)

    def dirty_runs(self) -> list[tuple[int, bytes]]:
        """Dirty FAT sectors grouped into (first sector index, bytes) contiguous runs."""
        ss = self.sector_size
        out: list[tuple[int, bytes]] = []
        for first, n in self.runs(sorted(self._dirty)):
            out.append((first, bytes(self._raw[first * ss:(first + n) * ss])))
        return out

    @property
    def dirty_sectors(self) -> frozenset[int]:
        return frozenset(self._dirty)

    def mark_sector_dirty(self, index: int) -> None:
        self._dirty.add(index)

    def clear_dirty(self) -> None:
        self._dirty.clear()
