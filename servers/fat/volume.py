"""The async FAT volume engine: mount, namespace operations, sizes, and extents.

:class:`FatVolume` drives the pure layout core (:mod:`bpb`, :mod:`fat_table`,
:mod:`dirent`, :mod:`names`) over a :class:`SectorIO`. The FAT is held in memory
(read once at mount); dirty FAT sectors are written to every FAT copy at the end
of each modifying operation, directory entries are written through at once. When
an operation allocates, the FAT goes out before the directory entry that refers to
the clusters; when it frees, the entry goes first. Every precondition (names,
space) is checked before the first write, so a failed operation writes nothing.

File identity (see ``docs/fat.md``): a file is a *node* keyed by the location of
its short entry, ``(directory first cluster, entry index)`` (the FAT12/16 root is
directory 0). Entry indices never move, because directories are never compacted.
``open`` hands out integer handles onto nodes; a node follows its file through
renames, and an unlinked open file keeps its clusters until its last close.
"""

from __future__ import annotations

import errno
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from microkernel.trace import log
from servers.fat.bpb import (
    FSINFO_UNKNOWN,
    BootSector,
    FsInfo,
    pack_fsinfo,
    parse_boot_sector,
    parse_fsinfo,
    set_boot_dirty,
)
from servers.fat.dirent import (
    ATTR_ARCHIVE,
    ATTR_DIRECTORY,
    DELETED_MARK,
    DOT_NAME,
    DOTDOT_NAME,
    ENTRY_SIZE,
    MAX_DIR_ENTRIES,
    DirListing,
    DirSlot,
    ShortEntry,
    dos_now,
    dos_to_epoch,
    find_free_run,
    parse_directory,
)
from servers.fat.errors import (
    AlreadyExists,
    BadBootSector,
    BadChain,
    BadHandle,
    DirectoryLoop,
    DirectoryNotEmpty,
    FatError,
    InvalidArgument,
    InvalidName,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    ReadOnlyVolume,
    Stale,
)
from servers.fat.fat_table import FREE, FatTable
from servers.fat.names import (
    ATTR_LFN,
    encode_lfn,
    exact_short_name,
    generate_short_name,
    lfn_checksum,
    validate_long_name,
)
from servers.fat.readahead import DirReadAhead
from servers.fat.sectorio import SectorIO
from servers.fs.protocol import ROOT_FILE_ID

MAX_FILE_SIZE = 0xFFFFFFFF
DIR_CACHE = 512  # parsed directories kept (least recently used goes first)
PAGE_BYTES = 4096  # the unit a power cut keeps or loses whole (a cache page)
ROOT_KEY = -1  # key of the root directory in node locations, whatever its cluster
ROOT_ID = ROOT_FILE_ID  # file id of the root directory; entries get ids from 2 on
MAX_DIR_DEPTH = 4096  # bound on the '..' links walked to find a directory's ancestors
# A bit of the short entry's NT byte that no FAT implementation uses (Windows NT uses
# 0x08 and 0x10 for lower-case names; fsck.fat and mtools ignore the rest): set on a
# rename's old entry before its new entry is written, so that a cut between the two
# writes tells mount repair which of the two names is the old one (docs/fat.md).
NT_RENAMED_FROM = 0x80


@dataclass(frozen=True, slots=True)
class Extent:
    """``count`` device sectors from ``lba`` hold the file bytes from ``file_offset`` on."""

    file_offset: int
    lba: int
    count: int


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What ``stat``/``readdir`` report about one entry."""

    name: str
    short_name: str
    attributes: int
    size: int
    first_cluster: int
    is_dir: bool
    ctime: float
    mtime: float
    atime: float
    location: tuple[int, int]  # (directory key, short entry index); root: (ROOT_KEY, -1)
    file_id: int = 0  # stable identity: follows renames, never reused (ROOT_ID for the root)


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    fat_type: int
    sector_size: int
    cluster_size: int
    total_clusters: int
    free_clusters: int
    data_start_sector: int
    label: str
    volume_id: int


@dataclass(slots=True)
class _Dir:
    """A directory's bytes in memory and where each of its sectors lives."""

    key: int  # first cluster, or 0 for the fixed FAT12/16 root
    sectors: list[int]  # volume sector of each directory sector, in order
    data: bytearray
    clusters: list[int]
    fixed: bool
    listing: DirListing = field(default_factory=DirListing)


@dataclass(slots=True)
class _Node:
    dir_key: int
    index: int
    first_index: int
    entry: ShortEntry
    name: str
    file_id: int
    opens: int = 0
    unlinked: bool = False
    reserved: int = 0  # bytes allocated beyond the published size (FsSetSize allocate_only)


@dataclass(slots=True)
class _Named:
    """A name mount repair met for a cluster: its path, directory and entry."""

    path: str
    dir_key: int
    slot: DirSlot


@dataclass(slots=True)
class _Found:
    parent: _Dir
    slot: DirSlot | None  # None: the path names the root directory
    ancestors: list[int]  # directory keys from the root down to (and including) parent
    leaf: str


FileRef = int | str


class FatVolume:
    """A mounted FAT12/16/32 volume. Create with :meth:`mount`, end with :meth:`unmount`."""

    def __init__(self, io: SectorIO, boot: BootSector, boot_raw: bytes, fat: FatTable,
                 read_only: bool) -> None:
        self.io = io
        self.boot = boot
        self._boot_raw = boot_raw
        self.fat = fat
        self.read_only = read_only
        self.problems: list[str] = []  # what mount found and tolerated (or repaired)
        self._chains: dict[int, tuple[int, list[int]]] = {}  # start -> (FAT version, chain)
        self._chain_runs: dict[int, tuple[int, list[tuple[int, int]]]] = {}  # same, as runs
        # Parsed directories by key, least recently used first. Every change to a directory
        # goes through its _Dir (entries written through, listing re-parsed in place), so a
        # parsed copy stays true across metadata writes; a directory whose clusters are freed
        # or written behind its back (``..`` of a moved directory) is dropped.
        self._dirs: OrderedDict[int, _Dir] = OrderedDict()
        self.was_dirty = False
        self.repairs = 0  # what mount repair changed on a volume left dirty (see _repair)
        self.write_error: str | None = None  # set when a barrier failed: no more writes
        # Set when an I/O call failed (a lost reply, EIO): the operation it belonged to
        # stopped part-way, its in-memory changes (a cluster allocated, an entry) half on
        # disk; unmount then keeps the dirty flag, and the next mount repairs.
        self.io_error: str | None = None
        # The operation that met that error left changes in memory (FAT entries, parsed
        # entries) that a later operation writes: they keep the order the stopped one had.
        self._interrupted = False
        self._scale = boot.bytes_per_sector // io.sector_size
        self._nodes: dict[tuple[int, int], _Node] = {}
        # File identity: an id per directory-entry location, moved by rename, dropped by
        # unlink; ids come from a counter, so no id is ever reused (see docs/fat.md).
        self._ids: dict[tuple[int, int], int] = {}
        self._locations: dict[int, tuple[int, int]] = {ROOT_ID: (ROOT_KEY, -1)}
        self._id_counter = itertools.count(ROOT_ID + 1)
        self._dir_clusters: dict[int, int] = {}  # file id of a directory -> its first cluster
        self._forgotten: set[int] = set()  # ids forgotten while open: dropped at last close
        self._handles: dict[int, _Node] = {}
        self._next_handle = itertools.count(1)
        self._read_ahead = DirReadAhead()  # opens going through a directory (read_ahead)
        self._mounted = True

    # ================================================================ mount
    @classmethod
    async def mount(cls, io: SectorIO, *, read_only: bool = False) -> FatVolume:
        """Validate the volume and mount it; read-write mounts set the dirty flag on disk."""
        head = await io.read(0, max(1, 512 // io.sector_size))
        boot = parse_boot_sector(head, io.total_sectors * io.sector_size)
        if boot.bytes_per_sector % io.sector_size:
            raise BadBootSector(f"volume sector {boot.bytes_per_sector} is not a multiple of "
                                f"the device sector {io.sector_size}")
        scale = boot.bytes_per_sector // io.sector_size
        boot_raw = await io.read(0, scale)
        fats = await io.read(boot.fat_start * scale, boot.num_fats * boot.fat_size * scale)
        copy_len = boot.fat_size * boot.bytes_per_sector
        copies = [fats[i * copy_len:(i + 1) * copy_len] for i in range(boot.num_fats)]
        primary = boot.active_fat or 0
        table = FatTable(copies[primary], boot.fat_type, boot.max_cluster, boot.bytes_per_sector)
        vol = cls(io, boot, boot_raw, table, read_only)
        vol._check_copies(copies, primary)
        vol.was_dirty = table.clean is False or boot.dirty
        if vol.was_dirty:
            vol.problems.append("volume was not cleanly unmounted (dirty flag set)")
        if boot.fat_type == 32:
            await vol._load_fsinfo()
        if not read_only:
            await vol._set_dirty(True)
            await vol._barrier()  # the dirty flag is on the disk before any change
            if vol.was_dirty:
                await vol._repair()
        return vol

    def _check_copies(self, copies: list[bytes], primary: int) -> None:
        """Differing FAT copies: FAT #primary is authoritative; read-write mounts rewrite the rest."""
        ss = self.boot.bytes_per_sector
        for n, copy in enumerate(copies):
            if n == primary or copy == copies[primary] or self.boot.active_fat is not None:
                continue
            bad = [s for s in range(len(copy) // ss)
                   if copy[s * ss:(s + 1) * ss] != copies[primary][s * ss:(s + 1) * ss]]
            self.problems.append(f"FAT copy {n} differs from FAT {primary} in {len(bad)} "
                                 f"sector(s); FAT {primary} is used")
            for s in bad:
                self.fat.mark_sector_dirty(s)

    async def _load_fsinfo(self) -> None:
        raw = await self._read(self.boot.fsinfo_sector, 1)
        info = parse_fsinfo(raw)
        actual = self.fat.free_count
        if not info.valid:
            self.problems.append("FSInfo sector signature invalid; free count recomputed")
        elif info.free_count not in (FSINFO_UNKNOWN, actual):
            self.problems.append(f"FSInfo free count {info.free_count} is wrong (actual "
                                 f"{actual}); recomputed")
        else:
            if 2 <= info.next_free <= self.boot.max_cluster:
                self.fat.next_free = info.next_free
            return

    async def _set_dirty(self, dirty: bool) -> None:
        await self._write_out()  # clean: only after everything else is on the disk
        self._after_everything()
        self.fat.set_clean(not dirty)
        await self._flush_fat()
        raw = set_boot_dirty(self._boot_raw, self.boot.fat_type == 32, dirty)
        if raw != self._boot_raw:
            self._boot_raw = raw
            await self._write(0, raw)

    async def unmount(self) -> None:
        """Flush everything, write FSInfo, clear the dirty flag. Closes open handles.

        The flag is cleared only if every operation finished: after an I/O error
        stopped one part-way (``io_error``), the FAT may hold a cluster allocated
        for an entry never written; the flag stays set and the next mount repairs.
        """
        if not self._mounted:
            return
        for handle in list(self._handles):
            try:
                await self.close(handle)
            except OSError:
                if self.write_error is None and self.io_error is None:
                    raise
        self._mounted = False  # no new operation; one still in flight may write below
        self._note_write_failure()
        if not self.read_only and self.write_error is None:
            if self.boot.fat_type == 32:
                await self._write_fsinfo()
            if self.io_error is None:
                await self._set_dirty(False)
            else:
                await self._flush_fat()
            self.io.seal()  # an operation still in flight cannot write past the clean flag
            await self.io.flush()

    async def _write_fsinfo(self) -> None:
        info = FsInfo(self.fat.free_count, self.fat.next_free)
        raw = pack_fsinfo(info, self.boot.bytes_per_sector)
        await self._write_out()
        self._after_everything()
        old = await self._read(self.boot.fsinfo_sector, 1)
        # Keep any bytes between the FSInfo fields (reserved, normally zero) intact.
        merged = raw[:4] + old[4:484] + raw[484:496] + old[496:508] + raw[508:]
        await self._write(self.boot.fsinfo_sector, merged)
        if self.boot.backup_boot_sector:
            await self._write(self.boot.backup_boot_sector + 1, merged)

    # ================================================================ low-level I/O
    async def _read(self, sector: int, count: int) -> bytes:
        try:
            return await self.io.read(sector * self._scale, count * self._scale)
        except OSError as exc:
            self._io_failed(exc)
            raise

    async def _write(self, sector: int, data: bytes) -> None:
        try:
            await self.io.write(sector * self._scale, data)
        except OSError as exc:
            self._io_failed(exc)
            raise

    def _io_failed(self, exc: OSError) -> None:
        """Remember that an operation stopped part-way (see ``io_error``): not clean."""
        self._interrupted = True
        if self.io_error is None:
            self.io_error = exc.strerror or str(exc)
            self.problems.append(f"an I/O error stopped an operation part-way ({exc}); "
                                 f"the dirty flag stays set for the next mount to repair")

    async def _flush_fat(self) -> None:
        """Write the dirty FAT sectors, in contiguous runs, to every (mirrored) FAT copy."""
        runs = self.fat.dirty_runs()
        if not runs or self.read_only:
            self.fat.clear_dirty()
            return
        await self._barrier()  # zero fill before links, entries before frees (docs/fat.md)
        active = self.boot.active_fat
        copies = [active] if active is not None else range(self.boot.num_fats)
        self._one_write_per_page(copies)
        runs = self.fat.dirty_runs()
        for n in copies:
            base = self.boot.fat_start + n * self.boot.fat_size
            for first, data in runs:
                await self._write(base + first, data)
        self.fat.clear_dirty()
        await self._discard_freed()

    def _one_write_per_page(self, copies: Iterable[int]) -> None:
        """Dirty FAT sectors that share a 4 KiB page of a copy become one run (one write).

        ``_link`` writes a new chain and its link without a barrier when they lie
        in one page, since a page reaches the disk whole. Through the cache that
        holds only if one write carries both: with eager barriers the cache may
        write the page back between two writes of it (a link to a cluster still
        free on the disk; the power-cut sweep found it on FAT12, seed 3). The
        sectors between are rewritten with what the disk already holds.
        """
        bps = self.boot.bytes_per_sector
        dirty = sorted(self.fat.dirty_sectors)
        for n in copies:
            base = self.io.partition_offset + (self.boot.fat_start + n * self.boot.fat_size) * bps
            by_page: dict[int, list[int]] = {}
            for sector in dirty:
                by_page.setdefault((base + sector * bps) // PAGE_BYTES, []).append(sector)
            for sectors in by_page.values():
                for sector in range(sectors[0], sectors[-1] + 1):
                    self.fat.mark_sector_dirty(sector)

    async def _discard_freed(self) -> None:
        """Freed clusters' cached pages are dropped, so nothing is written back for them."""
        freed, self.fat.freed = self.fat.freed, set()
        for first, n in self._cluster_sectors(sorted(c for c in freed
                                                     if self.fat.get(c) == FREE)):
            await self.io.discard(first * self._scale, n * self._scale)

    def _cluster_sectors(self, clusters: list[int]) -> list[tuple[int, int]]:
        spc = self.boot.sectors_per_cluster
        return [(self.boot.cluster_to_sector(c), n * spc) for c, n in self.fat.runs(clusters)]

    def _note_write_failure(self) -> None:
        """A write-out that failed in the background (``SectorIO.write_failure``) stops writing."""
        if self.io.write_failure is not None and self.write_error is None:
            self.write_error = self.io.write_failure
            self.problems.append(f"metadata write failed, volume stopped writing: "
                                 f"{self.write_error}")

    def _writable(self) -> None:
        """Check the volume may change; a new operation starts (``SectorIO.begin``)."""
        self._note_write_failure()
        if self.read_only:
            raise ReadOnlyVolume("volume is mounted read-only")
        if not self._mounted:
            raise FatError("volume is not mounted", errno.EINVAL)
        if self.write_error is not None:
            raise FatError(f"volume stopped writing after a metadata write error "
                           f"({self.write_error}); remount to repair", errno.EIO)
        self._begin()
        self.reclaim_if_durable()

    def _begin(self) -> None:
        """A new operation's order scope; after one stopped part-way, it carries that one's.

        A lazy order (docs/fat.md) scopes "what follows what" to one operation. An
        operation stopped by an I/O error can leave a FAT free or an entry changed in
        memory only; the next operation's writes carry it to the disk, and they must
        follow what the stopped operation's would have (e.g. an entry cleared before
        its clusters are freed), so each scope starts from the stopped one's until the
        FAT changes it left in memory are written.
        """
        self.io.begin(carry=self._interrupted)
        if not self.fat.has_unwritten:
            self._interrupted = False

    def reclaim_if_durable(self) -> None:
        """Clusters freed in quarantine become allocatable once no FAT change waits."""
        if self.fat.held and not self.io.pending_writes and not self.fat.has_unwritten:
            self.fat.release_held()

    async def _room(self, count: int) -> None:
        """Enough allocatable clusters for ``count``, writing out frees held back if need be."""
        if self.fat.held and count > self.fat.available:
            await self._flush_fat()
            await self._write_out()
            self.fat.release_held()

    async def _barrier(self, data: Sequence[tuple[int, int]] = ()) -> None:
        """``io.barrier``; a failure stops all further writing (like ext4's errors=remount-ro).

        The group that failed may land in part, as after a power cut inside it;
        anything written after it could land before it, so nothing is. The dirty
        flag stays set, and the next mount repairs.
        """
        if self.write_error is not None:
            raise FatError(f"volume stopped writing after a metadata write error "
                           f"({self.write_error})", errno.EIO)
        try:
            await self.io.barrier(data)
        except OSError as exc:
            self._stop_writing(exc)
            raise

    def _stop_writing(self, exc: OSError) -> None:
        self._io_failed(exc)
        if self.write_error is None:
            self.write_error = exc.strerror or str(exc)
            self.problems.append(f"metadata write failed, volume stopped writing: {exc}")

    async def _write_out(self) -> None:
        """Everything written so far is durable (a barrier that waits for all of it)."""
        if self.write_error is not None:
            raise FatError(f"volume stopped writing after a metadata write error "
                           f"({self.write_error})", errno.EIO)
        try:
            await self.io.barrier()
            await self.io.flush()
        except OSError as exc:
            self._stop_writing(exc)
            raise

    # ================================================================ directories
    @property
    def _root_cluster(self) -> int:
        return self.boot.root_cluster if self.boot.fat_type == 32 else 0

    async def _load_dir(self, key: int) -> _Dir:
        """A directory, parsed; kept (and updated in place) across metadata writes.

        Lookups walk the same directories again and again; the volume is their
        only writer and changes them through this very object, so a lookup costs
        the same at depth 1 and at depth 200.
        """
        d = self._dirs.get(key)
        if d is not None:
            self._dirs.move_to_end(key)
            return d
        d = await self._read_dir(key)
        self._dirs[key] = d
        while len(self._dirs) > DIR_CACHE:
            self._dirs.popitem(last=False)
        return d

    def _forget_dir(self, key: int) -> None:
        """The directory at ``key`` is gone (or was written behind its parsed copy)."""
        self._dirs.pop(key, None)

    async def _read_dir(self, key: int) -> _Dir:
        """Read a whole directory in as few calls as its cluster runs allow."""
        if key == 0 and self.boot.fat_type != 32:
            start, n = self.boot.root_dir_start, self.boot.root_dir_sectors
            data = bytearray(await self._read(start, n))
            d = _Dir(0, list(range(start, start + n)), data, [], True)
        else:
            cap = MAX_DIR_ENTRIES * ENTRY_SIZE // self.boot.cluster_size
            clusters = self.fat.chain(key, limit=cap)
            sectors: list[int] = []
            parts: list[bytes] = []
            for first, n in self._cluster_sectors(clusters):
                parts.append(await self._read(first, n))
                sectors.extend(range(first, first + n))
            d = _Dir(key, sectors, bytearray(b"".join(parts)), clusters, False)
        d.listing = parse_directory(d.data)
        return d

    async def _write_entries(self, d: _Dir, first: int, count: int, *,
                             refs: bool = True) -> None:
        """Write back the sectors holding entries first..first+count-1.

        ``refs``: the entries may name clusters (a first cluster, a size), so
        they go after every FAT change still unwritten, whichever operation made
        it (a lazy SectorIO orders only within an operation otherwise). Only a
        deletion names nothing.
        """
        ss = self.boot.bytes_per_sector
        lo = first * ENTRY_SIZE // ss
        hi = ((first + count) * ENTRY_SIZE - 1) // ss
        await self._barrier()  # the FAT (or the entry) this one depends on goes first
        if refs:
            self.io.order_after(self.boot.fat_start * self._scale,
                                self.boot.num_fats * self.boot.fat_size * self._scale)
        run_start = lo
        for s in range(lo, hi + 1):
            if s == hi or d.sectors[s + 1] != d.sectors[s] + 1:
                await self._write(d.sectors[run_start], bytes(d.data[run_start * ss:(s + 1) * ss]))
                run_start = s + 1

    async def _find(self, path: str) -> _Found:
        """Resolve ``path`` to (parent directory, entry); bounded by the path's length."""
        parts = [p for p in path.split("/") if p]
        d = await self._load_dir(self._root_cluster)
        ancestors = [d.key]
        if not parts:
            return _Found(d, None, ancestors, "")
        for depth, part in enumerate(parts):
            slot = self._lookup(d, part)
            last = depth == len(parts) - 1
            if last:
                return _Found(d, slot, ancestors, part)
            if slot is None:
                raise NotFound(f"{'/'.join(parts[:depth + 1])}: no such file or directory")
            if not slot.entry.is_dir:
                raise NotADirectory(f"{'/'.join(parts[:depth + 1])}: not a directory")
            key = self._subdir_key(slot, ancestors)
            d = await self._load_dir(key)
            ancestors.append(key)
        raise AssertionError("unreachable")  # pragma: no cover

    def _subdir_key(self, slot: DirSlot, ancestors: list[int]) -> int:
        key = slot.entry.cluster
        if key == 0:
            raise BadChain(f"directory {slot.name!r} has no cluster")
        if key in ancestors or key == self._root_cluster:
            raise DirectoryLoop(f"directory {slot.name!r} points to an ancestor (cluster {key})")
        return key

    @staticmethod
    def _lookup(d: _Dir, name: str) -> DirSlot | None:
        wanted = name.upper()
        if name in (".", ".."):
            return None
        return d.listing.find(wanted)

    async def _existing(self, path: str) -> _Found:
        found = await self._find(path)
        if found.slot is None and found.leaf:
            raise NotFound(f"{path}: no such file or directory")
        return found

    # ================================================================ entries
    @staticmethod
    def _name_entries(d: _Dir, name: str, template: ShortEntry,
                      ignore: frozenset[int] = frozenset()) -> list[bytes]:
        """The LFN + short entries that store ``template`` under ``name`` in ``d``.

        Short names of the entries at ``ignore`` (about to be deleted by a rename)
        do not count as taken.
        """
        validate_long_name(name)
        if ignore:
            taken = {s.entry.name for s in d.listing.slots if s.index not in ignore}
        else:
            taken = d.listing.short_names()  # kept by the listing: no walk per create
        exact = exact_short_name(name)
        if exact is not None and exact[0] not in taken:
            return [template.with_(name=exact[0], nt_flags=exact[1]).pack()]
        short = generate_short_name(name, taken.__contains__)
        lfn = encode_lfn(name, lfn_checksum(short))
        return [*lfn, template.with_(name=short, nt_flags=0).pack()]

    def _growth(self, d: _Dir, need: int) -> tuple[int, int]:
        """Where ``need`` entries go in ``d`` and how many clusters the directory must gain."""
        end = d.listing.end
        if d.listing.deleted == 0 and end + need <= len(d.data) // ENTRY_SIZE:
            return end, 0  # nothing deleted before the end: the first free run is at the end
        at = find_free_run(d.data, need, end)
        if at is not None:
            return at, 0
        if d.fixed:
            raise NoSpace("the fixed-size root directory is full")
        total = len(d.data) // ENTRY_SIZE
        start = find_free_run(d.data + bytes(need * ENTRY_SIZE), need, d.listing.end)
        start = d.listing.end if start is None else start
        per_cluster = self.boot.cluster_size // ENTRY_SIZE
        extra = -(-(start + need - total) // per_cluster)
        if total + extra * per_cluster > MAX_DIR_ENTRIES:
            raise NoSpace("directory has reached the FAT limit of 65536 entries")
        return start, extra

    async def _insert(self, d: _Dir, entries: list[bytes],
                      replacing: DirSlot | None = None) -> tuple[int, bool]:
        """Place entries in ``d`` (growing it if it must); return the first index.

        ``replacing`` (a rename within ``d``): when the old entries and the new
        ones lie in one 4 KiB page, both changes go in one write, so no cut sees
        both names; the flag says whether that happened. Raises NoSpace (writing
        nothing) if the fixed root or the volume is full.
        """
        need = len(entries)
        at, extra = self._growth(d, need)
        if extra:
            await self._grow_dir(d, extra)
        old_end = d.listing.end
        for i, raw in enumerate(entries):
            d.data[(at + i) * ENTRY_SIZE:(at + i + 1) * ENTRY_SIZE] = raw
        count = need
        after = at + need
        if after < len(d.data) // ENTRY_SIZE and after > d.listing.end - 1 and (
                d.data[after * ENTRY_SIZE] != 0):
            d.data[after * ENTRY_SIZE] = 0  # keep the end marker right after new entries
            count += 1
        lo, hi = at, at + count - 1
        if replacing is not None:
            lo, hi = min(lo, replacing.first_index), max(hi, replacing.index)
        together = replacing is not None and self._one_page(d, lo, hi)
        if together and replacing is not None:
            for i in range(replacing.first_index, replacing.index + 1):
                d.data[i * ENTRY_SIZE] = DELETED_MARK
            await self._write_entries(d, lo, hi - lo + 1)
        else:
            if replacing is not None:  # two writes: the old name is marked before the new
                await self._mark_renamed_from(d, replacing)
            await self._write_entries(d, at, count)
        if replacing is None and self._listed_in_place(d, at, need, old_end):
            return at, together
        d.listing = parse_directory(d.data)
        return at, together

    @staticmethod
    def _listed_in_place(d: _Dir, at: int, need: int, old_end: int) -> bool:
        """Add the entries just written at ``at`` to ``d``'s parsed listing without a reparse.

        Only where a reparse could not read them differently: they parse on their own
        as one complete entry set, and the entry before them is no long-name entry
        that a reparse might join to them. Otherwise False: the caller reparses.
        """
        if at > 0:
            before = d.data[(at - 1) * ENTRY_SIZE:at * ENTRY_SIZE]
            if before[0] != DELETED_MARK and before[11] & 0x3F == ATTR_LFN:
                return False
        alone = parse_directory(bytes(d.data[at * ENTRY_SIZE:(at + need) * ENTRY_SIZE]))
        if len(alone.slots) != 1 or alone.orphan_lfn or alone.bad_checksum or alone.deleted:
            return False
        (slot,) = alone.slots
        if slot.first_index != 0 or slot.index != need - 1:
            return False
        placed = DirSlot(at + slot.index, at, slot.entry, slot.long_name)
        end = max(old_end, at + need)
        d.listing.add(placed, end, reused=max(0, min(at + need, old_end) - at))
        return True

    def _one_page(self, d: _Dir, first: int, last: int) -> bool:
        """Do entries first..last lie in consecutive sectors of one 4 KiB device page?"""
        ss = self.boot.bytes_per_sector
        sectors = d.sectors[first * ENTRY_SIZE // ss:last * ENTRY_SIZE // ss + 1]
        base = self.io.partition_offset
        pages = {(base + s * ss) // PAGE_BYTES for s in sectors}
        return len(pages) == 1 and sectors == list(range(sectors[0], sectors[0] + len(sectors)))

    async def _grow_dir(self, d: _Dir, extra: int) -> None:
        """Add ``extra`` zeroed clusters to a cluster-chained directory (zeros before FAT)."""
        await self._room(extra)
        new = self.fat.allocate(extra, after=d.clusters[-1], link=False)
        zeros = bytes(self.boot.cluster_size)
        for first, n in self._cluster_sectors(new):
            await self._write(first, zeros * (n // self.boot.sectors_per_cluster))
            d.sectors.extend(range(first, first + n))
        await self._link(d.clusters[-1], new[0])
        d.clusters.extend(new)
        d.data.extend(bytes(extra * self.boot.cluster_size))

    async def _delete_slot(self, d: _Dir, slot: DirSlot) -> None:
        self._forget_id((self._cluster_to_key(d.key), slot.index))
        for i in range(slot.first_index, slot.index + 1):
            d.data[i * ENTRY_SIZE] = DELETED_MARK
        await self._write_entries(d, slot.first_index, slot.index - slot.first_index + 1,
                                  refs=False)
        d.listing = parse_directory(d.data)

    async def _rewrite_entry(self, node: _Node) -> None:
        if node.unlinked:
            return
        d = await self._load_dir(self._key_to_cluster(node.dir_key))
        at = node.index * ENTRY_SIZE
        on_disk = ShortEntry.unpack(bytes(d.data[at:at + ENTRY_SIZE]))
        # The name bytes belong to the directory (a rename may have changed them).
        node.entry = node.entry.with_(name=on_disk.name, nt_flags=on_disk.nt_flags)
        d.data[at:at + ENTRY_SIZE] = node.entry.pack()
        d.listing.update_entry(node.index, node.entry)
        await self._write_entries(d, node.index, 1)

    def _key_to_cluster(self, key: int) -> int:
        return self._root_cluster if key == ROOT_KEY else key

    def _cluster_to_key(self, cluster: int) -> int:
        return ROOT_KEY if cluster == self._root_cluster else cluster

    # ================================================================ info
    def _info(self, slot: DirSlot, dir_cluster: int, file_id: int = 0) -> FileInfo:
        """What stat reports; ``file_id`` given for an open node (it may be unlinked)."""
        e = slot.entry
        loc = (self._cluster_to_key(dir_cluster), slot.index)
        return FileInfo(
            name=slot.name, short_name=slot.short_name, attributes=e.attr,
            size=0 if e.is_dir else e.size, first_cluster=e.cluster, is_dir=e.is_dir,
            ctime=dos_to_epoch(e.cdate, e.ctime, e.ctime_cs), mtime=dos_to_epoch(e.mdate, e.mtime),
            atime=dos_to_epoch(e.adate), location=loc, file_id=file_id or self._id_of(loc, e))

    def _id_of(self, loc: tuple[int, int], entry: ShortEntry | None = None) -> int:
        """The file id of the entry at ``loc``, handing out a fresh one the first time.

        A directory's id also finds its cluster, for lookups relative to it.
        """
        file_id = self._ids.get(loc)
        if file_id is None:
            file_id = self._ids[loc] = next(self._id_counter)
            self._locations[file_id] = loc
        self._forgotten.discard(file_id)  # handed out again: referenced again
        if entry is not None and entry.is_dir and entry.cluster:
            self._dir_clusters[file_id] = entry.cluster
        return file_id

    def _forget_id(self, loc: tuple[int, int]) -> None:
        """The entry at ``loc`` is gone: a new entry there will be a new file."""
        file_id = self._ids.pop(loc, None)
        if file_id is not None:
            self._locations.pop(file_id, None)
            self._dir_clusters.pop(file_id, None)

    def _move_id(self, old: tuple[int, int], new: tuple[int, int]) -> None:
        """A rename: the file keeps its id at its new location."""
        self._forget_id(new)
        file_id = self._ids.pop(old, None)
        if file_id is not None:
            self._ids[new] = file_id
            self._locations[file_id] = new

    def forget(self, file_ids: Sequence[int]) -> None:
        """Nobody outside references these ids (FsForget): drop them from the id table.

        The table then holds only what is open or referenced, however many
        entries were ever reported. An open file keeps its id until its last
        close (the kernel file driver keys its central file by it); the root
        keeps ROOT_ID. The next lookup of a dropped entry hands out a fresh id:
        ids come from a counter and are never reused.
        """
        for file_id in file_ids:
            loc = self._locations.get(file_id)
            if file_id == ROOT_ID or loc is None:
                continue
            node = self._nodes.get(loc)
            if node is not None and node.file_id == file_id:
                self._forgotten.add(file_id)
            else:
                self._drop_id(file_id)

    def _drop_id(self, file_id: int) -> None:
        self._forgotten.discard(file_id)
        loc = self._locations.pop(file_id, None)
        if loc is not None and self._ids.get(loc) == file_id:
            del self._ids[loc]
        self._dir_clusters.pop(file_id, None)

    @property
    def id_table_size(self) -> int:
        """Entries in the table of file ids (bounded by what is open or referenced)."""
        return len(self._ids)

    def _root_info(self) -> FileInfo:
        return FileInfo("/", "/", ATTR_DIRECTORY, 0, self._root_cluster, True, 0.0, 0.0, 0.0,
                        (ROOT_KEY, -1), ROOT_ID)

    async def stat(self, ref: FileRef) -> FileInfo:
        if isinstance(ref, int):
            node = self._handle(ref)
            slot = DirSlot(node.index, node.first_index, node.entry, None)
            info = self._info(slot, self._key_to_cluster(node.dir_key), node.file_id)
            return replace(info, name=node.name)
        found = await self._existing(ref)
        if found.slot is None:
            return self._root_info()
        slot = found.slot
        clipped = self._clip_to_chain(slot.name, slot.entry)
        if clipped is not slot.entry:
            slot = replace(slot, entry=clipped)
        return self._info(slot, found.parent.key)

    def _clip_to_chain(self, name: str, entry: ShortEntry) -> ShortEntry:
        """An entry claiming more bytes than its cluster chain holds, clipped to the chain.

        Done at open and stat, before anybody sizes a buffer or a mapping by the
        claim (0xFFFFFFFF bytes on a 2-cluster chain must not make a reader
        allocate 4 GiB). Logged as a volume problem; a damaged chain is left to
        the data path, which reports EIO for that file only.
        """
        if entry.is_dir or entry.size == 0:
            return entry
        try:
            clusters = sum(n for _, n in self._runs_of(entry.cluster)) if entry.cluster else 0
        except FatError:
            return entry
        room = clusters * self.boot.cluster_size
        if entry.size <= room:
            return entry
        problem = (f"{name}: size {entry.size} exceeds its chain of {clusters} clusters; "
                   f"clipped to {room} bytes")
        if problem not in self.problems:
            self.problems.append(problem)
            log.warning("volume problem", problem=problem)
        return entry.with_(size=room)

    async def readdir(self, path: str = "/") -> list[FileInfo]:
        """The entries of a directory (without '.', '..' and the volume label)."""
        d = await self._open_dir(path)
        return [self._info(s, d.key) for s in d.listing.slots
                if not s.entry.is_label and not s.entry.is_dot]

    async def _open_dir(self, path: str) -> _Dir:
        found = await self._existing(path)
        if found.slot is None:
            return found.parent
        if not found.slot.entry.is_dir:
            raise NotADirectory(f"{path}: not a directory")
        return await self._load_dir(self._subdir_key(found.slot, found.ancestors))

    def statfs(self) -> VolumeInfo:
        b = self.boot
        return VolumeInfo(b.fat_type, b.bytes_per_sector, b.cluster_size, b.cluster_count,
                          self.fat.free_count, b.data_start,
                          b.label.decode("cp850", "replace").rstrip(), b.volume_id)

    # ================================================================ handles
    def _handle(self, handle: int) -> _Node:
        try:
            return self._handles[handle]
        except KeyError:
            raise BadHandle(f"no open file with handle {handle}") from None

    async def open(self, path: str, *, create: bool = False, exclusive: bool = False,
                   truncate: bool = False) -> int:
        """Open a file (optionally creating it); return a handle for the other calls.

        One walk of the path: a create inserts into the parent it found.
        """
        found = await self._find(path)
        if found.slot is None and not found.leaf:
            raise IsADirectory("/: is a directory")
        slot = found.slot
        if slot is None:
            if not create:
                raise NotFound(f"{path}: no such file or directory")
            self._writable()
            slot = await self._create_in(found.parent, found.leaf, ATTR_ARCHIVE)
        elif exclusive and create:
            raise AlreadyExists(f"{path}: file exists")
        if slot.entry.is_dir:
            raise IsADirectory(f"{path}: is a directory")
        handle = self._open_node(found.parent, slot)
        if truncate and self._handles[handle].entry.size:
            await self.set_size(handle, 0)
        return handle

    def _open_node(self, d: _Dir, slot: DirSlot) -> int:
        node = self._node(d, slot)
        node.opens += 1
        handle = next(self._next_handle)
        self._handles[handle] = node
        return handle

    # ================================================================ relative to a directory
    async def _dir_of(self, dir_id: int) -> _Dir:
        """The directory whose file id is ``dir_id`` (ROOT_ID: the root), parsed."""
        if dir_id == ROOT_ID:
            return await self._load_dir(self._root_cluster)
        cluster = self._dir_clusters.get(dir_id)
        if cluster is None and dir_id in self._locations:
            raise NotADirectory(f"file id {dir_id} is not a directory")
        if cluster is None or dir_id not in self._locations:
            raise Stale(f"file id {dir_id} names no directory (removed, or never looked up)")
        if cluster == self._root_cluster:
            raise DirectoryLoop(f"directory {dir_id} points to the root (cluster {cluster})")
        return await self._load_dir(cluster)

    async def lookup(self, dir_id: int, name: str) -> FileInfo:
        """``name`` in the directory ``dir_id``: one parsed directory, one index probe."""
        d = await self._dir_of(dir_id)
        slot = self._lookup(d, name)
        if slot is None:
            raise NotFound(f"{name}: no such file or directory in directory {dir_id}")
        return self._info(slot, d.key)

    async def readdir_of(self, dir_id: int) -> list[FileInfo]:
        d = await self._dir_of(dir_id)
        return [self._info(s, d.key) for s in d.listing.slots
                if not s.entry.is_label and not s.entry.is_dot]

    async def open_at(self, dir_id: int, name: str, *, create: bool = False,
                      exclusive: bool = False) -> int:
        """Open (optionally create) ``name`` in the directory ``dir_id``; a handle."""
        d = await self._dir_of(dir_id)
        slot = self._lookup(d, name)
        if slot is None:
            if not create or name in (".", ".."):
                raise NotFound(f"{name}: no such file or directory in directory {dir_id}")
            self._writable()
            slot = await self._create_in(d, name, ATTR_ARCHIVE)
        elif exclusive and create:
            raise AlreadyExists(f"{name}: file exists")
        if slot.entry.is_dir:
            raise IsADirectory(f"{name}: is a directory")
        return self._open_node(d, slot)

    # ================================================================ the read side of an open
    def opened_extents(self, handle: int, max_bytes: int, page: int) -> list[Extent]:
        """Where an opened small file's whole ``page``-sized pages are, as ``extents`` would
        answer for them: for a regular file of 1..``max_bytes`` bytes, else none.

        None either when its chain cannot be resolved: the read then asks and meets the
        error itself, the open does not fail for it.
        """
        node = self._handle(handle)
        size = node.entry.size
        if node.entry.is_dir or not 0 < size <= max_bytes:
            return []
        try:
            return self._extents(node, 0, -(-size // page) * page)
        except FatError:
            return []

    def read_ahead(self, handle: int, max_bytes: int, page: int,
                   max_pages: int) -> list[tuple[int, int]]:
        """An open of an existing file: the device sectors to read ahead, as (first, count).

        When the opens of its directory go forward (:class:`DirReadAhead`), the
        clusters of the next regular files of 1..``max_bytes`` bytes from this
        one on, at most ``max_pages`` pages of ``page`` bytes; files that follow
        each other on the disk make one span. Bounded chain walks; an entry whose
        chain is damaged is left out (its own open reports it).
        """
        node = self._handle(handle)
        d = self._dirs.get(self._key_to_cluster(node.dir_key))
        if d is None:
            return []

        def pages(slot: DirSlot) -> int:
            e = slot.entry
            if e.is_dir or e.is_label or e.is_dot or e.cluster < 2 or not 0 < e.size <= max_bytes:
                return 0
            return -(-e.size // page)

        chosen = self._read_ahead.opened(node.dir_key, d.listing.slots, node.index, pages,
                                         max_pages)
        cs, spc = self.boot.cluster_size, self.boot.sectors_per_cluster
        spans: list[tuple[int, int]] = []
        for slot in chosen:
            try:
                runs = self.fat.chain_runs(slot.entry.cluster, -(-slot.entry.size // cs))
            except FatError:
                continue
            for first, n in runs:
                sector, count = self.boot.cluster_to_sector(first) * self._scale, n * spc * self._scale
                if spans and spans[-1][0] + spans[-1][1] == sector:
                    spans[-1] = (spans[-1][0], spans[-1][1] + count)
                else:
                    spans.append((sector, count))
        return spans

    def _node(self, d: _Dir, slot: DirSlot) -> _Node:
        loc = (self._cluster_to_key(d.key), slot.index)
        node = self._nodes.get(loc)
        if node is None:
            entry = self._clip_to_chain(slot.name, slot.entry)
            node = _Node(loc[0], slot.index, slot.first_index, entry, slot.name,
                         self._id_of(loc))
            self._nodes[loc] = node
        return node

    async def close(self, handle: int) -> None:
        node = self._handle(handle)
        self._begin()
        del self._handles[handle]
        node.opens -= 1
        if node.opens:
            return
        loc = (node.dir_key, node.index)
        if self._nodes.get(loc) is node:  # an unlinked node's place may hold a new file now
            del self._nodes[loc]
        if node.file_id in self._forgotten:
            self._drop_id(node.file_id)
        if node.reserved and not node.unlinked and not self.read_only:
            await self._drop_reservation(node)
        if node.unlinked and node.entry.cluster and not self.read_only:
            self._free_chain(node.entry.cluster, node.name)
            await self._flush_fat()

    async def _drop_reservation(self, node: _Node) -> None:
        """Last close: clusters reserved beyond the published size go back (end mark first)."""
        node.reserved = 0
        if not node.entry.cluster:
            return
        want = -(-node.entry.size // self.boot.cluster_size)
        chain = self._walk(node.entry.cluster)
        if want < len(chain):
            if not want:
                node.entry = node.entry.with_(cluster=0)
                await self._rewrite_entry(node)
                self._after_pending_entries()  # a pending old name may still hold the chain
            await self._cut_chain(chain, want)

    def _after_everything(self) -> None:
        """What is written next follows everything still unwritten (lazy order)."""
        self.io.begin()
        self.io.order_after(0, self.io.total_sectors)

    def _after_pending_entries(self) -> None:
        """What frees clusters next follows every directory change still unwritten.

        Whichever operation made it: an entry naming the clusters may be gone
        only in a pending page (an unlink, a rename's removal of the old name, a
        shrink). Eager barriers leave nothing pending; the lazy order needs this
        (docs/fat.md). Reservation tails past the size are freed without it: no
        entry's size covers them.
        """
        fat_end = (self.boot.fat_start + self.boot.num_fats * self.boot.fat_size) * self._scale
        self.io.order_after(0, self.boot.fat_start * self._scale)
        self.io.order_after(fat_end, self.io.total_sectors - fat_end)

    def _free_chain(self, cluster: int, name: str) -> None:
        """Free a chain; a damaged chain is left allocated (fsck reclaims it) and reported."""
        self._after_pending_entries()
        try:
            self.fat.free_chain(cluster)
        except BadChain as exc:
            self.problems.append(f"{name}: clusters not freed, damaged chain: {exc.strerror}")

    async def _target(self, ref: FileRef) -> tuple[_Node, bool]:
        """The node for a handle or a path; the flag says it is a temporary (unopened) node."""
        if isinstance(ref, int):
            return self._handle(ref), False
        found = await self._existing(ref)
        if found.slot is None:
            raise IsADirectory("/: is a directory")
        loc = (self._cluster_to_key(found.parent.key), found.slot.index)
        if loc in self._nodes:
            return self._nodes[loc], False
        slot = found.slot
        entry = self._clip_to_chain(slot.name, slot.entry)
        return _Node(loc[0], slot.index, slot.first_index, entry, slot.name,
                     self._id_of(loc)), True

    # ================================================================ namespace
    async def create(self, path: str, attributes: int = ATTR_ARCHIVE) -> FileInfo:
        """Create an empty file (first cluster 0)."""
        self._writable()
        found = await self._find(path)
        if found.slot is not None or not found.leaf:
            raise AlreadyExists(f"{path}: file exists")
        slot = await self._create_in(found.parent, found.leaf, attributes)
        return self._info(slot, found.parent.key)

    async def _create_in(self, d: _Dir, name: str, attributes: int) -> DirSlot:
        entries = self._name_entries(d, name, _new_entry(attributes))
        at, _ = await self._insert(d, entries)
        return self._slot_at(d, at + len(entries) - 1)

    @staticmethod
    def _slot_at(d: _Dir, index: int) -> DirSlot:
        slot = d.listing.slot_at(index)
        if slot is None:  # pragma: no cover
            raise AssertionError(f"no entry at {index}")
        return slot

    async def mkdir(self, path: str) -> FileInfo:
        """Create a directory with '.' and '..'; the new cluster is written before the entry."""
        self._writable()
        return await self._make_dir(await self._find(path), path)

    async def _make_dir(self, found: _Found, path: str) -> FileInfo:
        if found.slot is not None or not found.leaf:
            raise AlreadyExists(f"{path}: file exists")
        parent = found.parent
        template = _new_entry(ATTR_DIRECTORY)
        entries = self._name_entries(parent, found.leaf, template)
        _, extra = self._growth(parent, len(entries))
        await self._room(1 + extra)
        if 1 + extra > self.fat.available:
            raise NoSpace(f"mkdir needs {1 + extra} clusters, {self.fat.available} free")
        cluster = self.fat.allocate(1)[0]
        await self._write_dir_cluster(cluster, template, parent.key)
        await self._flush_fat()
        entries[-1] = ShortEntry.unpack(entries[-1]).with_(cluster=cluster).pack()
        at, _ = await self._insert(parent, entries)
        return self._info(self._slot_at(parent, at + len(entries) - 1), parent.key)

    async def _write_dir_cluster(self, cluster: int, template: ShortEntry, parent: int) -> None:
        data = bytearray(self.boot.cluster_size)
        dot = template.with_(name=DOT_NAME, cluster=cluster, nt_flags=0)
        up = template.with_(name=DOTDOT_NAME, nt_flags=0,
                            cluster=0 if parent == self._root_cluster else parent)
        data[0:ENTRY_SIZE] = dot.pack()
        data[ENTRY_SIZE:2 * ENTRY_SIZE] = up.pack()
        self._forget_dir(cluster)
        await self._write(self.boot.cluster_to_sector(cluster), bytes(data))

    async def unlink(self, path: str) -> None:
        self._writable()
        await self._unlink_found(await self._existing(path), path)

    async def _unlink_found(self, found: _Found, path: str) -> None:
        slot = found.slot
        if slot is None or slot.entry.is_dir:
            raise IsADirectory(f"{path}: is a directory")
        await self._remove_file(found.parent, slot)
        await self._flush_fat()

    async def _remove_file(self, d: _Dir, slot: DirSlot) -> None:
        """Delete a file's entries; its clusters are freed now, or at last close if open."""
        await self._delete_slot(d, slot)
        node = self._nodes.pop((self._cluster_to_key(d.key), slot.index), None)
        if node is not None:
            node.unlinked = True
        elif slot.entry.cluster:
            self._free_chain(slot.entry.cluster, slot.name)

    async def rmdir(self, path: str) -> None:
        self._writable()
        await self._rmdir_found(await self._existing(path), path)

    async def _rmdir_found(self, found: _Found, path: str) -> None:
        slot = found.slot
        if slot is None:
            raise FatError("cannot remove the root directory", errno.EBUSY)
        if not slot.entry.is_dir:
            raise NotADirectory(f"{path}: not a directory")
        await self._remove_dir(found, slot, path)
        await self._flush_fat()

    async def _remove_dir(self, found: _Found, slot: DirSlot, path: str) -> None:
        key = self._subdir_key(slot, found.ancestors)
        sub = await self._load_dir(key)
        if any(not s.entry.is_dot and not s.entry.is_label for s in sub.listing.slots):
            raise DirectoryNotEmpty(f"{path}: directory not empty")
        await self._delete_slot(found.parent, slot)
        self._forget_dir(key)
        self._free_chain(key, slot.name)

    async def rename(self, src: str, dst: str) -> None:
        """Rename/move ``src`` to ``dst``, replacing a file or an empty directory there."""
        self._writable()
        await self._rename_found(await self._existing(src), await self._find(dst), src, dst)

    async def _rename_found(self, s: _Found, d: _Found, src: str, dst: str) -> None:
        """``d.ancestors`` must reach the root when a directory changes parent (loop check)."""
        if s.slot is None:
            raise FatError("cannot rename the root directory", errno.EBUSY)
        if not d.leaf:
            raise FatError("cannot replace the root directory", errno.EBUSY)
        src_slot = s.slot
        moving_dir = src_slot.entry.is_dir
        if moving_dir and src_slot.entry.cluster in d.ancestors:
            raise InvalidArgument(f"cannot move {src} into itself")
        same_dir = d.parent.key == s.parent.key
        target = d.parent if not same_dir else s.parent
        if d.slot is not None:
            if same_dir and d.slot.index == src_slot.index:
                if d.leaf == src_slot.name:
                    return
            else:
                self._check_replace(src_slot, d.slot, dst)
                if d.slot.entry.is_dir:
                    await self._check_empty(d, d.slot, dst)
        await self._move(s, src_slot, target, d, same_dir)

    @staticmethod
    def _check_replace(src: DirSlot, dst: DirSlot, path: str) -> None:
        if dst.entry.is_dir and not src.entry.is_dir:
            raise IsADirectory(f"{path}: is a directory")
        if src.entry.is_dir and not dst.entry.is_dir:
            raise NotADirectory(f"{path}: not a directory")

    async def _check_empty(self, found: _Found, slot: DirSlot, path: str) -> None:
        sub = await self._load_dir(self._subdir_key(slot, found.ancestors))
        if any(not e.entry.is_dot and not e.entry.is_label for e in sub.listing.slots):
            raise DirectoryNotEmpty(f"{path}: directory not empty")

    async def _move(self, s: _Found, src_slot: DirSlot, target: _Dir, d: _Found,
                    same_dir: bool) -> None:
        """Old name marked, new name written, a moved directory's ``..``, then the old name
        goes, then the replaced file's clusters.

        A file replacing a file of exactly the new name takes over the replaced
        short entry in place: one sector write swaps what the name means, so no
        cut shows two entries of one name. Until the old entry is removed both
        names share the clusters (the one window mount repair resolves to a
        single name, docs/fat.md).
        """
        replaced = d.slot
        if replaced is not None and same_dir and replaced.index == src_slot.index:
            replaced = None
        removed = False  # the old entry went in the same write as the new one
        # Marking the old entry also orders the new name after that page's pending
        # changes (a published size, lazy order): a cut shows two equal entries.
        if not (same_dir and replaced is None):  # else _insert: one write, or marks first
            await self._mark_renamed_from(target if same_dir else s.parent, src_slot)
        if replaced is not None and not replaced.entry.is_dir and replaced.name == d.leaf:
            first, index, entry = await self._take_over(target, replaced, src_slot.entry)
        else:
            ignore = {src_slot.index} if same_dir else set()
            if replaced is not None:
                ignore.add(replaced.index)
            entries = self._name_entries(target, d.leaf, src_slot.entry, frozenset(ignore))
            first, removed = await self._insert(
                target, entries, src_slot if same_dir and replaced is None else None)
            index, entry = first + len(entries) - 1, ShortEntry.unpack(entries[-1])
            if replaced is not None and replaced.entry.is_dir:  # an empty directory
                await self._delete_slot(target, replaced)
                self._forget_dir(replaced.entry.cluster)
                self._free_chain(replaced.entry.cluster, replaced.name)
            elif replaced is not None:  # a file, named in another case: a new spelling
                await self._remove_file(target, replaced)
        old_dir = target if same_dir else s.parent
        self._rekey((old_dir.key, src_slot.index), (target.key, first, index), d.leaf, entry)
        if src_slot.entry.is_dir and not same_dir:  # before the old name goes: a cut after
            await self._fix_dotdot(src_slot.entry.cluster, target.key)  # it leaves no stale '..'
        if not removed:
            await self._delete_slot(old_dir, src_slot)
        await self._flush_fat()

    async def _mark_renamed_from(self, d: _Dir, slot: DirSlot) -> None:
        """Mark a rename's old short entry (``NT_RENAMED_FROM``) before the new one is written.

        Until the old entry is removed both names share the file's clusters;
        the mark tells mount repair which name the rename was leaving, so it
        completes the rename whatever order its walk finds the two names in.
        The new entry is built from the unmarked entry, so it never carries the mark.
        """
        at = slot.index * ENTRY_SIZE
        entry = ShortEntry.unpack(bytes(d.data[at:at + ENTRY_SIZE]))
        d.data[at:at + ENTRY_SIZE] = entry.with_(
            nt_flags=entry.nt_flags | NT_RENAMED_FROM).pack()
        await self._write_entries(d, slot.index, 1)

    async def _take_over(self, d: _Dir, replaced: DirSlot,
                         entry: ShortEntry) -> tuple[int, int, ShortEntry]:
        """Write ``entry`` over the replaced file's short entry (keeping its name bytes).

        The replaced file's clusters are freed at the caller's FAT flush, after
        the entry is on disk, or at its last close if it is open.
        """
        entry = entry.with_(name=replaced.entry.name,
                            nt_flags=replaced.entry.nt_flags & ~NT_RENAMED_FROM)
        at = replaced.index * ENTRY_SIZE
        d.data[at:at + ENTRY_SIZE] = entry.pack()
        await self._write_entries(d, replaced.index, 1)
        d.listing = parse_directory(d.data)
        node = self._nodes.pop((self._cluster_to_key(d.key), replaced.index), None)
        if node is not None:
            node.unlinked = True
        elif replaced.entry.cluster:
            self._free_chain(replaced.entry.cluster, replaced.name)
        return replaced.first_index, replaced.index, entry

    def _rekey(self, old: tuple[int, int], new: tuple[int, int, int], name: str,
               entry: ShortEntry) -> None:
        """A file was renamed: its id (and node, if open) follow it to (dir, first, index)."""
        self._move_id((self._cluster_to_key(old[0]), old[1]),
                      (self._cluster_to_key(new[0]), new[2]))
        node = self._nodes.pop((self._cluster_to_key(old[0]), old[1]), None)
        if node is None:
            return
        node.dir_key, node.first_index, node.index = self._cluster_to_key(new[0]), new[1], new[2]
        node.name, node.entry = name, entry
        self._nodes[(node.dir_key, node.index)] = node

    async def _fix_dotdot(self, cluster: int, new_parent: int) -> None:
        first = self.boot.cluster_to_sector(cluster)
        raw = bytearray(await self._read(first, 1))
        up = ShortEntry.unpack(bytes(raw[ENTRY_SIZE:2 * ENTRY_SIZE]))
        if up.name != DOTDOT_NAME:
            self.problems.append(f"directory at cluster {cluster} has no '..' entry")
            return
        up = up.with_(cluster=0 if new_parent == self._root_cluster else new_parent)
        raw[ENTRY_SIZE:2 * ENTRY_SIZE] = up.pack()
        self._forget_dir(cluster)
        await self._barrier()
        await self._write(first, bytes(raw))

    # ================================================================ namespace by directory
    async def _found_at(self, dir_id: int, name: str) -> _Found:
        """``name`` in the directory ``dir_id``, as a path walk would have found it.

        ``ancestors`` holds only the parent: the full chain costs a walk up
        ``..`` and only a directory changing parent needs it (:meth:`rename_at`).
        """
        if not name or name in (".", "..") or "/" in name:
            raise InvalidName(f"{name!r} names no entry of directory {dir_id}")
        d = await self._dir_of(dir_id)
        return _Found(d, self._lookup(d, name), [d.key], name)

    async def _ancestry(self, key: int) -> list[int]:
        """Directory keys from the root down to ``key``, by walking '..' (bounded, loop-checked).

        The volume's own '..' entries are the truth after any number of renames
        (``_fix_dotdot`` rewrites them), whatever ids were handed out or forgotten.
        """
        root = self._root_cluster
        chain = [key]
        for _ in range(MAX_DIR_DEPTH):
            if key == root:
                chain.reverse()
                return chain
            d = await self._load_dir(key)
            up = ShortEntry.unpack(bytes(d.data[ENTRY_SIZE:2 * ENTRY_SIZE]))
            if up.name != DOTDOT_NAME:
                raise DirectoryLoop(f"directory at cluster {key} has no '..' entry")
            key = up.cluster or root
            if key in chain:
                raise DirectoryLoop(f"directory at cluster {chain[-1]} is its own ancestor")
            chain.append(key)
        raise DirectoryLoop(f"directory at cluster {chain[0]} is over {MAX_DIR_DEPTH} deep")

    async def mkdir_at(self, dir_id: int, name: str) -> FileInfo:
        self._writable()
        return await self._make_dir(await self._found_at(dir_id, name), name)

    async def unlink_at(self, dir_id: int, name: str) -> None:
        self._writable()
        found = await self._found_at(dir_id, name)
        if found.slot is None:
            raise NotFound(f"{name}: no such file or directory in directory {dir_id}")
        await self._unlink_found(found, name)

    async def rmdir_at(self, dir_id: int, name: str) -> None:
        self._writable()
        found = await self._found_at(dir_id, name)
        if found.slot is None:
            raise NotFound(f"{name}: no such file or directory in directory {dir_id}")
        await self._rmdir_found(found, name)

    async def rename_at(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> None:
        """Rename by directory ids; a directory may not move below itself (ancestry by '..')."""
        self._writable()
        s = await self._found_at(src_dir, src_name)
        if s.slot is None:
            raise NotFound(f"{src_name}: no such file or directory in directory {src_dir}")
        d = await self._found_at(dst_dir, dst_name)
        if s.slot.entry.is_dir and d.parent.key != s.parent.key:
            d.ancestors = await self._ancestry(d.parent.key)
        await self._rename_found(s, d, src_name, dst_name)

    # ================================================================ sizes & data
    async def set_size(self, ref: FileRef, size: int, *, zero_fill: bool = True,
                       allocate_only: bool = False,
                       written: tuple[int, int] | None = None) -> list[Extent]:
        """Truncate or extend a file; return the extents of the newly allocated clusters.

        With ``zero_fill`` the new clusters (and the stale tail of the old last
        cluster) are zeroed through the SectorIO (the cache supplies whole zero
        pages without reading the disk), except clusters lying wholly inside
        ``written`` (file byte range start, end), which the caller is about to
        write. ``allocate_only`` allocates clusters for ``size`` bytes but leaves
        the size in the directory entry as it is (a reservation: the size on disk
        never covers bytes not yet written); a later plain call publishes the
        size, writing the data pages it covers before the entry.
        """
        self._writable()
        node, _temp = await self._target(ref)
        if node.entry.is_dir:
            raise IsADirectory(f"{node.name}: is a directory")
        if not 0 <= size <= MAX_FILE_SIZE:
            raise FatError(f"size {size} outside 0..{MAX_FILE_SIZE}", errno.EFBIG if size > 0
                           else errno.EINVAL)
        cs = self.boot.cluster_size
        old_size = node.entry.size
        chain = self._chain(node, -(-old_size // cs))
        want = -(-size // cs)
        new: list[int] = []
        if allocate_only:  # beyond the size nothing is visible: zero fill waits for publishing
            if want > len(chain):
                new = await self._grow(node, chain, want, size, False, None)
                if not chain:  # the entry needs its first cluster; the size waits
                    await self._rewrite_entry(node)
            node.reserved = max(node.reserved, size)
            return self._new_extents(new, len(chain) * cs)
        if want > len(chain):
            new = await self._grow(node, chain, want, size, zero_fill, written)
        elif zero_fill and size > old_size:
            await self._zero(chain, old_size, [], size, written)
        if size > old_size and node.reserved:  # the data (and zeros) go before the size
            await self._barrier(self._data_runs(node, old_size, size))
        # A size published inside the reservation keeps it; a shrink gives it up.
        trim = want < len(chain) and (size < old_size or not node.reserved)
        node.reserved = 0 if trim or node.reserved <= size else node.reserved
        date, tm, _ = dos_now()
        first = chain[0] if chain else (new[0] if new else 0)
        held = bool(node.reserved) and not trim  # a kept reservation still needs its head named
        node.entry = node.entry.with_(cluster=first if want or held else 0, size=size,
                                      mdate=date, mtime=tm, adate=date)
        await self._rewrite_entry(node)
        if trim:
            if size < old_size or not want:  # the entry stops naming clusters it named on disk
                self._after_pending_entries()
            await self._cut_chain(chain, want)
        return self._new_extents(new, len(chain) * cs)

    def allocated(self, handle: int) -> int:
        """Bytes of clusters the file holds: its size rounded up, or its reservation."""
        node = self._handle(handle)
        cs = self.boot.cluster_size
        return -(-max(node.entry.size, node.reserved) // cs) * cs

    async def _grow(self, node: _Node, chain: list[int], want: int, size: int,
                    zero_fill: bool, written: tuple[int, int] | None) -> list[int]:
        """Allocate, zero and link the clusters a file needs beyond ``chain``."""
        cs = self.boot.cluster_size
        await self._room(want - len(chain))
        new = self.fat.allocate(want - len(chain), after=chain[-1] if chain else None,
                                link=False)
        try:  # zero the new clusters before any on-disk structure points at them
            if zero_fill:
                await self._zero(chain, node.entry.size, new, min(size, len(chain) * cs),
                                 written)
        except BaseException:
            self._unallocate(chain, new)
            raise
        await self._link(chain[-1] if chain else None, new[0])
        node.entry = node.entry.with_(cluster=chain[0] if chain else new[0])
        return new

    def _data_runs(self, node: _Node, start: int, end: int) -> list[tuple[int, int]]:
        """(volume lba, count) runs of the file's bytes start..end (for a data barrier)."""
        return [(e.lba // self._scale, -(-e.count // self._scale))
                for e in self._extents(node, start, end - start)]

    async def _link(self, last: int | None, first_new: int) -> None:
        """Put a new chain on disk, then (after a barrier) the link that makes it the file's.

        A cut between the two leaves the new clusters lost, never a chain that
        runs into a free cluster (the new entries and the link may sit in
        different FAT pages, which the disk may write in any order). When all of
        it lies in one 4 KiB page, one write carries it and no barrier is needed.
        """
        if last is not None:
            self.fat.set(last, first_new)
            if self._fat_changes_atomic():
                await self._flush_fat()
                return
            self.fat.set(last, self.fat.eoc)
        await self._flush_fat()
        if last is not None:
            self.fat.set(last, first_new)
            await self._flush_fat()

    def _fat_changes_atomic(self) -> bool:
        """Do the unwritten FAT changes lie in one 4 KiB page (of each copy)?

        A page is written whole or not at all (a power cut tears writes only at
        page boundaries), so such changes need no order among themselves.
        """
        bps = self.boot.bytes_per_sector
        base = self.io.partition_offset + self.boot.fat_start * bps
        pages = {(base + s * bps) // PAGE_BYTES for first, data in self.fat.dirty_runs()
                 for s in range(first, first + len(data) // bps)}
        return len(pages) <= 1

    async def _cut_chain(self, chain: list[int], keep: int) -> None:
        """Keep ``chain[:keep]``: end-of-chain mark first, then (after a barrier) free the rest.

        One barrier less when all of it lies in one FAT page (see ``_fat_changes_atomic``).
        """
        if keep:
            self.fat.set(chain[keep - 1], self.fat.eoc)
            if not self._entries_in_one_page(chain[keep - 1:]):
                # The end mark goes alone first; the tail stays linked till then (and the
                # part of it in the end mark's own page may join that page's write).
                await self._flush_fat()
        self.fat.truncate_chain(chain, keep)
        await self._flush_fat()

    def _entries_in_one_page(self, clusters: list[int]) -> bool:
        """Do these clusters' FAT entries (and any other unwritten change) lie in one
        4 KiB page of each FAT copy? Then one write per copy changes them all at once."""
        bps = self.boot.bytes_per_sector
        width = {12: 2, 16: 2, 32: 4}[self.boot.fat_type]  # bytes an entry touches
        offsets = [c * 3 // 2 if self.boot.fat_type == 12 else c * width for c in clusters]
        sectors = {o // bps for o in offsets} | {(o + width - 1) // bps for o in offsets}
        sectors |= {s for first, data in self.fat.dirty_runs()
                    for s in range(first, first + len(data) // bps)}
        for n in range(self.boot.num_fats):
            base = self.io.partition_offset + (self.boot.fat_start + n * self.boot.fat_size) * bps
            if len({(base + s * bps) // PAGE_BYTES for s in sectors}) > 1:
                return False
        return True

    def _unallocate(self, chain: list[int], new: list[int]) -> None:
        """Undo an in-memory allocation whose zero fill failed: the disk never saw it."""
        if chain:
            self.fat.set(chain[-1], self.fat.eoc)
        for cluster in new:
            self.fat.set(cluster, FREE)

    def _chain(self, node: _Node, need: int) -> list[int]:
        """The file's chain, walked no further than its size needs (plus any tail)."""
        if node.entry.cluster == 0:
            if need:
                raise BadChain(f"{node.name}: size {node.entry.size} but no first cluster")
            return []
        chain = self._walk(node.entry.cluster)
        if len(chain) < need:
            raise BadChain(f"{node.name}: chain of {len(chain)} clusters is shorter than its "
                           f"size ({need} clusters)")
        return chain

    def _walk(self, start: int) -> list[int]:
        """``fat.chain(start)``, cached until the FAT changes (MapRange asks again and again)."""
        hit = self._chains.get(start)
        if hit is not None and hit[0] == self.fat.version:
            return hit[1]
        chain = self.fat.chain(start)
        if len(self._chains) > 256:
            self._chains.clear()
        self._chains[start] = (self.fat.version, chain)
        return chain

    def _runs_of(self, start: int) -> list[tuple[int, int]]:
        """``fat.chain_runs(start)``, cached like ``_walk`` (a MapRange per part of a big
        file must not walk the chain again)."""
        hit = self._chain_runs.get(start)
        if hit is not None and hit[0] == self.fat.version:
            return hit[1]
        runs = self.fat.chain_runs(start)
        if len(self._chain_runs) > 256:
            self._chain_runs.clear()
        self._chain_runs[start] = (self.fat.version, runs)
        return runs

    def _new_extents(self, clusters: list[int], file_offset: int) -> list[Extent]:
        out = []
        for first, n in self._cluster_sectors(clusters):
            out.append(Extent(file_offset, first * self._scale, n * self._scale))
            file_offset += n * self.boot.bytes_per_sector
        return out

    async def _zero(self, chain: list[int], old_size: int, new: list[int], tail_end: int,
                    written: tuple[int, int] | None = None) -> None:
        """Zero bytes old_size..tail_end of the old chain and the new clusters after it,
        except what lies inside ``written`` (the caller writes, or has written, that)."""
        lo, hi = written if written is not None else (0, 0)
        if tail_end > old_size and chain:
            for a, b in _outside(old_size, tail_end, lo, hi):
                await self._write_range(chain, a, bytes(b - a))
        cs, ss = self.boot.cluster_size, self.boot.bytes_per_sector
        whole: list[int] = []
        for i, c in enumerate(new, len(chain)):
            parts = _outside(i * cs, (i + 1) * cs, lo, hi)
            if parts == [(i * cs, (i + 1) * cs)]:
                whole.append(c)
                continue
            for a, b in parts:
                await self._write_range(chain + new, a, bytes(b - a))
        zeros = bytes(ss)
        for first, n in self._cluster_sectors(whole):
            await self._write(first, zeros * n)

    async def extents(self, ref: FileRef, offset: int = 0, length: int | None = None
                      ) -> list[Extent]:
        """Resolve file bytes offset..offset+length to runs of contiguous device sectors.

        The range is clipped to the file's allocated clusters; ``offset`` is rounded
        down to a volume sector. Adjacent clusters merge into one extent. Bounded.
        """
        node, _ = await self._target(ref)
        if node.entry.is_dir:
            raise IsADirectory(f"{node.name}: is a directory")
        return self._extents(node, offset, length)

    def _extents(self, node: _Node, offset: int, length: int | None) -> list[Extent]:
        cs, ss = self.boot.cluster_size, self.boot.bytes_per_sector
        alloc_end = -(-max(node.entry.size, node.reserved) // cs) * cs
        end = alloc_end if length is None else min(alloc_end, offset + length)
        offset -= offset % ss
        if offset >= end:
            return []
        need = -(-end // cs)
        if not self._chain(node, -(-node.entry.size // cs)):  # checks it against the size
            return []
        out: list[Extent] = []
        index = 0  # file cluster index of the run's first cluster
        for first, count in self._runs_of(node.entry.cluster):
            if index >= need:
                break
            lo, hi = max(offset, index * cs), min(end, (index + count) * cs)
            index += count
            if lo >= hi:
                continue
            sec = self.boot.cluster_to_sector(first) + (lo - (index - count) * cs) // ss
            n = -(-(hi - lo) // ss)
            out.append(Extent(lo, sec * self._scale, n * self._scale))
        return out

    async def read(self, ref: FileRef, offset: int = 0, length: int | None = None) -> bytes:
        """Read file data through the SectorIO (the tools' copy path, not the zero-copy one)."""
        node, _ = await self._target(ref)
        if node.entry.is_dir:
            raise IsADirectory(f"{node.name}: is a directory")
        size = node.entry.size
        end = size if length is None else min(size, offset + length)
        if offset >= end:
            return b""
        parts = []
        for ext in self._extents(node, offset, end - offset):
            parts.append(await self.io.read(ext.lba, ext.count))
        start = offset % self.boot.bytes_per_sector
        return b"".join(parts)[start:start + end - offset]

    async def write(self, ref: FileRef, offset: int, data: bytes) -> int:
        """Write file data through the SectorIO, extending (zero-filled) as needed."""
        node, _ = await self._target(ref)
        if offset + len(data) > node.entry.size:
            await self.set_size(ref, offset + len(data))
            node, _ = await self._target(ref)
        else:
            self._writable()
        chain = self._chain(node, -(-node.entry.size // self.boot.cluster_size))
        await self._write_range(chain, offset, data)
        return len(data)

    async def _write_range(self, chain: list[int], offset: int, data: bytes) -> None:
        """Write bytes at a file offset, read-modify-writing partial sectors."""
        ss = self.boot.bytes_per_sector
        pos = 0
        while pos < len(data):
            file_pos = offset + pos
            cl = chain[file_pos // self.boot.cluster_size]
            sec = self.boot.cluster_to_sector(cl) + file_pos % self.boot.cluster_size // ss
            within = file_pos % ss
            take = min(ss - within, len(data) - pos)
            if take == ss:
                await self._write(sec, data[pos:pos + ss])
            else:
                buf = bytearray(await self._read(sec, 1))
                buf[within:within + take] = data[pos:pos + take]
                await self._write(sec, bytes(buf))
            pos += take

    async def set_times(self, ref: FileRef, mtime: float | None = None,
                        atime: float | None = None) -> None:
        self._writable()
        node, _ = await self._target(ref)
        mdate, mt, _ = dos_now(mtime)
        adate, _, _ = dos_now(atime if atime is not None else mtime)
        node.entry = node.entry.with_(mdate=mdate, mtime=mt, adate=adate)
        await self._rewrite_entry(node)

    async def fsync(self, ref: FileRef | None = None) -> None:
        """Make the file's (and all) metadata durable: dirty FAT sectors, then a device flush."""
        if ref is not None and isinstance(ref, int):
            self._handle(ref)
        if not self.read_only:
            await self._flush_fat()
            await self.io.flush()

    # ================================================================ check
    async def check(self) -> list[str]:
        """A small, bounded fsck (read-only): the damage the table in docs/fat.md lists.

        Reports cross-linked clusters, directory loops, damaged chains, orphan or
        mismatched long-name entries and lost clusters. Each directory cluster is
        visited at most once, so a loop cannot make the walk run forever.
        """
        report: list[str] = []
        owner: dict[int, str] = {}
        root = self._root_cluster
        stack: list[tuple[int, str, frozenset[int]]] = [(root, "", frozenset({root}))]
        seen: set[int] = set()
        while stack:
            key, path, ancestors = stack.pop()
            if key in seen:
                report.append(f"{path or '/'}: directory reached twice (cross-linked directory)")
                continue
            seen.add(key)
            try:
                d = await self._load_dir(key)
            except BadChain as exc:
                report.append(f"{path or '/'}: {exc.strerror}")
                continue
            self._claim(d.clusters, path or "/", owner, report)
            if d.listing.orphan_lfn or d.listing.bad_checksum:
                report.append(f"{path or '/'}: {d.listing.orphan_lfn} orphan long-name entries, "
                              f"{d.listing.bad_checksum} with a bad checksum")
            for slot in d.listing.slots:
                if slot.entry.is_dot or slot.entry.is_label:
                    continue
                child, cl = f"{path}/{slot.name}", slot.entry.cluster
                if slot.entry.is_dir and (cl in ancestors or cl == root):
                    report.append(f"{child}: directory loop (cluster {cl} is an ancestor)")
                elif slot.entry.is_dir and cl:
                    stack.append((cl, child, ancestors | {cl}))
                elif cl:
                    self._check_file(child, slot.entry, owner, report)
        lost = sum(1 for c in range(2, self.boot.max_cluster + 1)
                   if self.fat.get(c) != 0 and c not in owner)
        if lost:
            report.append(f"{lost} lost cluster(s): allocated but in no file")
        return report

    def _check_file(self, path: str, entry: ShortEntry, owner: dict[int, str],
                    report: list[str]) -> None:
        try:
            chain = self.fat.chain(entry.cluster)
        except BadChain as exc:
            report.append(f"{path}: {exc.strerror}")
            return
        if len(chain) * self.boot.cluster_size < entry.size:
            report.append(f"{path}: chain shorter than the file size")
        self._claim(chain, path, owner, report)

    @staticmethod
    def _claim(clusters: list[int], path: str, owner: dict[int, str],
               report: list[str]) -> None:
        for c in clusters:
            other = owner.setdefault(c, path)
            if other != path:
                report.append(f"{path}: cross-linked with {other} at cluster {c}")
                return

    # ================================================================ repair
    async def _repair(self) -> None:
        """Repair what a power cut can leave behind, given the write order of docs/fat.md.

        Runs at a read-write mount of a volume whose dirty flag was set, before
        anything is served. Two names for one chain (a rename cut between its
        two entry writes) keep the new name: the old one carries the
        ``NT_RENAMED_FROM`` mark (without a mark on exactly one of them, the first
        name found stays); a directory's ``..`` is made to name the parent its
        kept name is in; a mark left on a single name (a cut before the new name
        was written) is cleared. A file whose chain is longer than its size loses
        the tail, one whose chain is shorter (or cut by a free cluster) is shrunk
        to the chain, one whose first cluster is free is emptied, and a directory
        entry whose first cluster is free is removed; allocated clusters no entry
        reaches (an allocation or a free cut short) are freed. Each repair is a problem entry and counts in
        ``repairs``. Damage no write order explains (cycles, directory loops,
        cross-links inside chains) is left for ``check`` and EIO.
        """
        root = self._root_cluster
        claimed: set[int] = set()
        names: dict[int, _Named] = {}  # first cluster -> the name kept for it so far
        stack: list[tuple[int, str, frozenset[int]]] = [(root, "", frozenset({root}))]
        seen: set[int] = set()
        queued = {root}  # a directory kept under its second name is queued once
        doubtful = False  # damage we do not understand: then no cluster is called lost
        while stack:
            key, path, ancestors = stack.pop()
            if key in seen:
                doubtful = True
                continue
            seen.add(key)
            try:
                d = await self._load_dir(key)
            except BadChain:
                doubtful = True
                continue
            claimed.update(d.clusters)
            for slot in list(d.listing.slots):
                if slot.entry.is_dot or slot.entry.is_label:
                    continue
                child, cl = f"{path}/{slot.name}", slot.entry.cluster
                if slot.entry.is_dir and cl and self._first_cluster_free(cl):
                    # The name reached the disk, the directory's FAT entry did not (or was
                    # freed first): what its cluster holds is no directory; the name goes.
                    await self._delete_slot(d, slot)
                    self._repaired(f"{child}: directory's first cluster {cl} is free; "
                                   "entry removed")
                    continue
                named = _Named(child, d.key, slot)
                if cl and cl in names:
                    if not await self._keep_one_name(names[cl], named):
                        continue
                    names[cl] = named  # the new name was found second
                elif cl:
                    names[cl] = named
                if slot.entry.is_dir:
                    if cl in ancestors or cl == root or not cl:
                        doubtful = True
                    elif cl not in queued:
                        queued.add(cl)
                        stack.append((cl, child, ancestors | {cl}))
                else:
                    chain, ok = await self._repair_file(d, slot, child)
                    claimed.update(chain)
                    doubtful = doubtful or not ok
        for cl, named in names.items():
            await self._repair_rename_leftovers(cl, named, cl in seen)
        if not doubtful:
            self._free_lost(claimed)
        await self._flush_fat()

    async def _keep_one_name(self, first: _Named, second: _Named) -> bool:
        """Two names start at one cluster (a rename cut between its entries): delete one.

        Returns whether the second name is the one kept. The old name is the
        one marked ``NT_RENAMED_FROM`` (the rename completes); with no mark to
        go by, the first name found stays.
        """
        first_marked = bool(first.slot.entry.nt_flags & NT_RENAMED_FROM)
        second_marked = bool(second.slot.entry.nt_flags & NT_RENAMED_FROM)
        loser, winner = (first, second) if first_marked and not second_marked else (
            second, first)
        d = await self._load_dir(loser.dir_key)
        await self._delete_slot(d, loser.slot)
        self._repaired(f"{loser.path}: old name of {winner.path} (a rename cut "
                       "between its entries) removed")
        return winner is second

    async def _repair_rename_leftovers(self, cluster: int, named: _Named, walked: bool) -> None:
        """The kept name loses a rename mark; a kept directory the walk entered (``walked``)
        gets a ``..`` naming its parent."""
        d = await self._load_dir(named.dir_key)
        at = named.slot.index * ENTRY_SIZE
        entry = ShortEntry.unpack(bytes(d.data[at:at + ENTRY_SIZE]))  # as repaired so far
        if entry.nt_flags & NT_RENAMED_FROM:
            await self._fix_entry(d, named.slot, entry.with_(
                nt_flags=entry.nt_flags & ~NT_RENAMED_FROM))
            self._repaired(f"{named.path}: mark of a rename cut before its new name cleared")
        if not entry.is_dir or not walked:
            return
        try:
            sub = await self._load_dir(cluster)
        except BadChain:  # damage no write order explains: left for check() and EIO
            return
        up = ShortEntry.unpack(bytes(sub.data[ENTRY_SIZE:2 * ENTRY_SIZE]))
        parent = named.dir_key
        if up.name == DOTDOT_NAME and (up.cluster or self._root_cluster) != parent:
            await self._fix_dotdot(cluster, named.dir_key)
            self._repaired(f"{named.path}: '..' set to its parent (a move cut before "
                           "'..' was rewritten)")

    def _repaired(self, what: str) -> None:
        self.problems.append(f"repaired: {what}")
        self.repairs += 1

    async def _repair_file(self, d: _Dir, slot: DirSlot, path: str) -> tuple[list[int], bool]:
        """Make one file's size and chain agree; returns its clusters and whether it was sane."""
        entry, cs = slot.entry, self.boot.cluster_size
        if not entry.cluster:
            if entry.size:
                self._repaired(f"{path}: size {entry.size} without clusters set to 0")
                await self._fix_entry(d, slot, entry.with_(size=0))
            return [], True
        chain, why = self.fat.valid_prefix(entry.cluster)
        if why is not None and not chain and self._first_cluster_free(entry.cluster):
            # The entry reached the disk, its chain's first FAT entry did not (or was
            # freed first): fsck reads it as an empty chain, so the file keeps no cluster.
            self._repaired(f"{path}: first cluster {entry.cluster} is free; file emptied")
            await self._fix_entry(d, slot, entry.with_(cluster=0, size=0))
            return [], True
        if why is not None and ("cyclic" in why or "longer than the volume" in why or not chain):
            return chain, False
        if why is not None:
            self.fat.set(chain[-1], self.fat.eoc)
            self._repaired(f"{path}: chain ended at cluster {chain[-1]} ({why})")
        need = -(-entry.size // cs)
        if len(chain) > need:
            await self._cut_chain(chain, need)
            self._repaired(f"{path}: {len(chain) - need} cluster(s) beyond its size "
                           f"{entry.size} freed")
            chain = chain[:need]
            if not need:
                await self._fix_entry(d, slot, entry.with_(cluster=0))
        elif len(chain) < need:
            size = len(chain) * cs
            self._repaired(f"{path}: size {entry.size} cut to its chain's {size} bytes")
            await self._fix_entry(d, slot, entry.with_(size=size))
        return chain, True

    def _first_cluster_free(self, cluster: int) -> bool:
        return 2 <= cluster <= self.boot.max_cluster and self.fat.get(cluster) == FREE

    async def _fix_entry(self, d: _Dir, slot: DirSlot, entry: ShortEntry) -> None:
        at = slot.index * ENTRY_SIZE
        d.data[at:at + ENTRY_SIZE] = entry.pack()
        await self._write_entries(d, slot.index, 1)
        d.listing = parse_directory(d.data)

    def _free_lost(self, claimed: set[int]) -> None:
        lost = [c for c in range(2, self.boot.max_cluster + 1)
                if c not in claimed and self.fat.get(c) not in (FREE, self.fat.bad)]
        for c in lost:
            self.fat.set(c, FREE)
        if lost:
            self._repaired(f"{len(lost)} lost cluster(s) freed")

    # ================================================================ alignment
    @property
    def data_start_byte(self) -> int:
        """Byte offset of cluster 2 from the start of the device."""
        return self.io.partition_offset + self.boot.data_start * self.boot.bytes_per_sector

    def data_alignment_ok(self, page_size: int = 4096, alignment_offset: int = 0) -> bool:
        """True when every cluster maps onto whole ``page_size`` device pages.

        The data region must start on a page boundary (counted from the device's
        first aligned byte, ``alignment_offset``) and clusters must be whole pages.
        """
        aligned = (self.data_start_byte - alignment_offset) % page_size == 0
        return aligned and self.boot.cluster_size % page_size == 0


def _outside(start: int, end: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of start..end outside lo..hi."""
    if hi <= lo or hi <= start or end <= lo:
        return [(start, end)]
    return [(a, b) for a, b in ((start, lo), (hi, end)) if a < b]


def _new_entry(attr: int) -> ShortEntry:
    date, tm, cs = dos_now()
    return ShortEntry(name=b" " * 11, attr=attr, ctime_cs=cs, ctime=tm, cdate=date, adate=date,
                      mtime=tm, mdate=date)

