"""The disc cache manager: a thin async shell around :mod:`servers.cache.pages`.

It owns up to ``capacity_pages`` physical frames (allocated lazily, from the
zone each device can DMA into), asks the drivers to DMA sectors straight into
them, and hands runs of pages (first sector, count, first frame) to whoever waits: the
kernel file driver for ``CacheRead`` (``SectorsReady`` goes to the *notify*
port, docs/architecture.md §4), the caller for ``CacheMap``. No file data ever crosses a
message or is copied here.

Memory pressure, in order of cost: evict clean unpinned pages by second
chance; write dirty candidates and evict them; ask the page holders
(``GiveBack``) and wait, bounded; then fail the request with ``CacheFull``
(ENOMEM). Below the low-water mark a background task reclaims up to the
high-water mark so requests rarely have to.
"""

from __future__ import annotations

import errno
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio

from drivers.protocol import Flush, Geometry, Identify, IoDone, Read, Write
from microkernel.errors import CapabilityDenied, PortNotFound, ServerStopped
from microkernel.ipc import Envelope, Router
from microkernel.memory import PAGE_SIZE, OutOfFrames, PhysicalMemory, QuotaExceeded, Zone
from microkernel.server import Server, handles
from servers.cache.errors import CacheError, CacheFull, DeviceError, NoSuchDevice, NotPinHolder
from servers.cache.geometry import PageGeometry, max_pages_per_command
from servers.cache.pages import (
    Admission,
    Load,
    PageCache,
    Store,
    Sweep,
    Waiter,
    merge_runs,
    page_runs,
)
from servers.cache.protocol import (
    PREFETCH_MAX_PAGES,
    CacheFailed,
    CacheMap,
    CachePrefetch,
    CacheRead,
    CacheRequest,
    CacheStats,
    Extent,
    FlushDevice,
    GetCacheStats,
    GiveBack,
    GiveBackDone,
    Invalidate,
    MarkDirty,
    PageRef,
    PageRun,
    Pages,
    PageSpan,
    Release,
    SectorsReady,
    Writeback,
)

# Bounds on the retry loops, so a pathological workload ends in a typed error, never a spin.
_ADMIT_ATTEMPTS = 64
_WRITEBACK_ROUNDS = 16
_UNREACHABLE = (PortNotFound, CapabilityDenied, ServerStopped)


@dataclass(frozen=True, slots=True)
class CachedDevice:
    """A device as the cache sees it: its driver port, geometry and derived limits."""

    name: str
    port: str
    geometry: Geometry
    pages: PageGeometry
    zone: Zone
    max_pages: int


@dataclass(eq=False, slots=True)
class _GiveBackRound:
    """One outstanding ``GiveBack``: the holders that have not answered yet."""

    request: int
    pending: set[str]
    done: anyio.Event = field(default_factory=anyio.Event)


def _zone_for(geometry: Geometry) -> Zone:
    """High frames for a controller that reaches them; a 32-bit one gets low frames while the
    cache's share of the low zone lasts, then high frames its driver bounces."""
    return Zone.PREFER_LOW if geometry.dma_bits <= 32 else Zone.ANY


def _first_pages(runs: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The first ``limit`` pages of sorted page runs, as runs."""
    out: list[tuple[int, int]] = []
    for lba, n in runs:
        if limit <= 0:
            break
        out.append((lba, min(n, limit)))
        limit -= n
    return out


def _errno_of(exc: OSError) -> tuple[int, str]:
    return exc.errno if exc.errno is not None else errno.EIO, exc.strerror or str(exc)


class CacheServer(Server):
    """The disc cache manager server (docs/architecture.md §4): pages, wait lists, writeback, replacement."""

    protocol = CacheRequest
    concurrent = True

    def __init__(
        self,
        name: str,
        router: Router,
        memory: PhysicalMemory,
        *,
        devices: dict[str, str],
        capacity_pages: int,
        low_water: float = 0.05,
        high_water: float = 0.15,
        writeback_interval: float | None = 1.0,
        holders: list[str] | None = None,
        max_pages_per_command: int | None = None,
        giveback_timeout: float = 5.0,
        io_timeout: float | None = 30.0,
        low_share: float = 0.5,
    ) -> None:
        if capacity_pages < 1:
            raise ValueError(f"capacity_pages must be >= 1, got {capacity_pages}")
        if not 0.0 <= low_share <= 1.0:
            raise ValueError(f"low_share must be within 0..1, got {low_share}")
        if not 0.0 <= low_water <= high_water < 1.0:
            raise ValueError(
                f"need 0 <= low_water <= high_water < 1, got {low_water}, {high_water}"
            )
        super().__init__(name, router)
        self.memory = memory
        self.capacity = capacity_pages
        self.low_share = low_share
        self.core = PageCache(memory.index_of)
        self.devices: dict[str, CachedDevice] = {}
        self._ports = dict(devices)
        self._low = math.ceil(low_water * capacity_pages)
        self._high = math.ceil(high_water * capacity_pages)
        self._interval = writeback_interval
        self._holders = ["vfs"] if holders is None else list(holders)
        self._page_limit = max_pages_per_command
        self._giveback_timeout = giveback_timeout
        self._io_timeout = io_timeout
        self._frames = 0
        self._waiting: dict[Waiter, anyio.Event] = {}
        self._open_reads: dict[int, CacheRead] = {}
        self._flushed: set[str] = set()  # devices with no write completed since a flush was sent
        self._flushing: dict[str, anyio.Event] = {}  # device -> set when its flush in flight ends
        self._read_ids = itertools.count()
        self.quarantined: list[int] = []  # frames a crash left to a driver's in-flight DMA
        self._rounds: dict[int, _GiveBackRound] = {}
        self._round: _GiveBackRound | None = None
        self._round_ids = itertools.count(1)
        self._hits = self._misses = self._evictions = 0
        self._commands = self._read_bytes = self._write_bytes = 0
        self._released = 0
        self._pins_refused = 0
        # Events need a running event loop: created in setup().
        self._pressure: anyio.Event | None = None
        self._backlog: dict[str, set[int]] = {}  # dirty pages the clock wants written
        self._writes_settled: anyio.Event | None = None

    # ---------------------------------------------------------------- lifecycle
    async def setup(self) -> None:
        """Identify every device, derive its page grid and DMA zone, set the frame quota."""
        self._pressure = anyio.Event()
        self._writes_settled = anyio.Event()
        for device, port in self._ports.items():
            geometry: Geometry = await self.endpoint.call(
                port, Identify(), Geometry, timeout=self._io_timeout
            )
            self.devices[device] = CachedDevice(
                device,
                port,
                geometry,
                PageGeometry.from_geometry(geometry),
                _zone_for(geometry),
                max_pages_per_command(geometry, self._page_limit),
            )
            self.core.add_device(device, self.devices[device].pages)
        self.memory.set_quota(
            self.name, self.capacity, low=int(self.low_share * self.memory.low_frames)
        )

    async def teardown(self) -> None:
        """Write every dirty page and flush every device while the drivers still run."""
        for device in self.devices.values():
            try:
                await self._writeback(device, None)
                await self._command(device, Flush())
            except OSError as exc:
                self.log.error("flush at shutdown failed", device=device.name, error=str(exc))

    async def background(self) -> None:
        """Periodic writeback and low-water reclaim, beside the inbox, for the server's life."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reclaimer)
            if self._interval is not None:
                tg.start_soon(self._periodic_writeback, self._interval)

    async def restart(self) -> None:
        """After a crash the handler tasks are gone: fail their requests, forget I/O in flight.

        Frames of reads that were in flight stay allocated (quarantined, still
        counted against the capacity): the driver may yet DMA into them, and a
        frame reused meanwhile would be silently corrupted.
        """
        why = f"cache {self.name} restarted after a crash"
        outcome = self.core.abort_io(errno.EIO, why)
        self.quarantined.extend(outcome.free)
        for waiter in list(self._waiting):
            if waiter.error is None:
                waiter.error = (errno.EIO, why)
                self.core.release_runs(waiter.device, waiter.runs, waiter.holder)
        self._wake(list(self._waiting))
        self._round = None
        reads, self._open_reads = self._open_reads, {}
        for msg in reads.values():
            await self._notify(msg.notify, CacheFailed(msg.tag, msg.device, errno.EIO, why))

    # ------------------------------------------------------------------ reading
    @handles(CacheRead)
    async def on_read(self, env: Envelope, msg: CacheRead) -> None:
        """Answer the notify port, never the sender: a failure is a ``CacheFailed`` message there.

        The pins are the notify port's (it receives the pages and releases them),
        so a file system asking on the VFS's behalf cannot release them itself.
        """
        key = next(self._read_ids)
        self._open_reads[key] = msg  # left behind only if a crash cancels us: restart() answers
        try:
            # a file's pages: zero-filled ones stay clean until their holder marks them
            waiter = await self._fetch(msg.device, msg.extents, msg.zero_fill, msg.notify,
                                       zero_dirty=False)
        except OSError as exc:
            del self._open_reads[key]
            err, message = _errno_of(exc)
            await self._notify(msg.notify, CacheFailed(msg.tag, msg.device, err, message))
            return
        del self._open_reads[key]
        refs = list(itertools.starmap(PageRun, self.core.refs(waiter)))
        if not await self._notify(msg.notify, SectorsReady(msg.tag, msg.device, refs)):
            # nobody will ever release these pins
            self.core.release_runs(msg.device, waiter.runs, waiter.holder)

    @handles(CacheMap)
    async def on_map(self, env: Envelope, msg: CacheMap) -> Pages:
        waiter = await self._fetch(msg.device, msg.extents, msg.zero_fill, env.src)
        spp = self._device(msg.device).pages.spp
        return Pages([
            PageRef(lba + k * spp, phys + k * PAGE_SIZE)
            for lba, n, phys in self.core.refs(waiter)
            for k in range(n)
        ])

    @handles(CachePrefetch)
    async def on_prefetch(self, env: Envelope, msg: CachePrefetch) -> None:
        """Read ahead (a hint): absent pages only, into frames free without evicting anything.

        The cache pins the pages itself while they are read (a ``CacheRead`` of
        them meanwhile joins the read, as it joins any) and drops the pins once
        they are in: clean, unpinned, reclaimable like any other page. Nobody is
        answered; a failed read leaves the pages absent for the next reader to
        meet the error. Bounded: ``PREFETCH_MAX_PAGES`` pages asked for at most,
        and never below the high-water mark of free frames (read-ahead must not
        make the reclaimer run).
        """
        device = self._device(msg.device)
        wanted = _first_pages(
            device.pages.page_runs(msg.extents[:PREFETCH_MAX_PAGES]), PREFETCH_MAX_PAGES
        )
        runs = self.core.absent_pieces(device.name, wanted, self._free_count() - self._high)
        need = sum(n for _, n in runs)
        frames = self._allocate(device, need) if need else None
        if frames is None:
            return
        admission = self.core.admit_runs(
            device.name, runs, set(), frames, self.name, device.max_pages
        )
        waiter = admission.waiter
        self.memory.zero(admission.zero)
        self._count(misses=need)
        done = self._waiting[waiter] = anyio.Event()
        if waiter.done:  # nothing to read (pages past the disk's edges come zeroed)
            self._wake([waiter])
        async with anyio.create_task_group() as tg:
            for load in admission.to_read:
                tg.start_soon(self._load, device, load)
        await done.wait()
        if waiter.error is None:  # a failed read already dropped its pins
            self.core.release_runs(device.name, waiter.runs, self.name)

    async def _notify(self, port: str, msg: SectorsReady | CacheFailed) -> bool:
        try:
            await self.endpoint.send(port, msg)
        except _UNREACHABLE as exc:
            self.log.warning("notify port unreachable", port=port, error=str(exc))
            return False
        return True

    async def _fetch(
        self, name: str, extents: list[Extent], zero_fill: bool, holder: str,
        *, zero_dirty: bool = True,
    ) -> Waiter:
        """Admit a request, load what is missing, wait for what others load; return it pinned
        for ``holder``. ``zero_dirty=False``: zero-filled pages are handed out clean
        (``PageCache.admit_runs``)."""
        device = self._device(name)
        runs = device.pages.page_runs(extents)
        total = sum(n for _, n in runs)
        if total > self.capacity:
            raise CacheFull(f"request for {total} pages exceeds the cache of {self.capacity}")
        whole = device.pages.whole_pages(extents) if zero_fill else set()
        admission = await self._admit(device, runs, whole, holder, zero_dirty)
        waiter = admission.waiter
        self.memory.zero(admission.zero)
        self._count(hits=admission.hits, misses=sum(load.count for load in admission.to_read))
        done = self._waiting[waiter] = anyio.Event()
        if waiter.done:
            self._wake([waiter])
        if admission.to_read:
            async with anyio.create_task_group() as tg:
                for load in admission.to_read:
                    tg.start_soon(self._load, device, load)
        if not done.is_set():  # a hit (pages read ahead, say) answers without a turn of the loop
            await done.wait()
        if waiter.error is not None:
            raise DeviceError(f"reading {name}: {waiter.error[1]}", waiter.error[0])
        return waiter

    async def _load(self, device: CachedDevice, load: Load) -> None:
        """One driver ``Read`` (one segment per frame run); its outcome moves the pages on and
        wakes whoever completes."""
        lba, count, sg = device.pages.parts_command(load.parts)
        try:
            await self._command(device, Read(lba, count, sg))
        except OSError as exc:
            outcome = self.core.load_failed(load, *_errno_of(exc))
            self._free(outcome.free)
        else:
            self._read_bytes += count * device.pages.sector_size
            outcome = self.core.loaded(load)
            self.memory.zero(outcome.zero)
        self._wake(outcome.finished)

    def _wake(self, waiters: Iterable[Waiter]) -> None:
        for waiter in waiters:
            event = self._waiting.pop(waiter, None)
            if event is not None:
                event.set()

    async def _command(self, device: CachedDevice, msg: Read | Write | Flush) -> IoDone:
        self._commands += 1
        done: IoDone = await self.endpoint.call(device.port, msg, IoDone, timeout=self._io_timeout)
        return done

    # -------------------------------------------------------------- admission
    async def _admit(
        self, device: CachedDevice, runs: list[tuple[int, int]], whole: set[int], holder: str,
        zero_dirty: bool = True,
    ) -> Admission:
        """Find frames for the absent pages, reclaiming as needed, then admit without awaiting."""
        for _ in range(_ADMIT_ATTEMPTS):
            need = self.core.absent_runs(device.name, runs)
            frames = self._allocate(device, need)
            if frames is not None:
                admission = self.core.admit_runs(
                    device.name, runs, whole, frames, holder, device.max_pages,
                    zero_dirty=zero_dirty,
                )
                if self._free_count() < self._low:
                    self._kick()
                return admission
            await self._reclaim(need)
        raise CacheFull(f"no frames for {sum(n for _, n in runs)} pages of {device.name} "
                        "after repeated reclaim")

    def _allocate(self, device: CachedDevice, need: int) -> list[int] | None:
        if need > self._free_count():
            return None
        try:
            frames = self.memory.alloc(self.name, need, device.zone)
        except (OutOfFrames, QuotaExceeded):
            return None
        self._frames += need
        # Frames other owners freed lately (a driver's PRP list pages) come first off the free
        # stack; in ascending order they join the run after them instead of splitting it.
        frames.sort()
        return frames

    def _free_count(self) -> int:
        return self.capacity - self._frames

    def _free(self, frames: list[int]) -> None:
        """Give frames back, highest first: the free stack then hands them out again lowest
        first, as ascending runs (one driver command and one mapping per run)."""
        if frames:
            self.memory.release(sorted(frames, reverse=True))
            self._frames -= len(frames)

    def _count(self, *, hits: int = 0, misses: int = 0, evictions: int = 0) -> None:
        self._hits += hits
        self._misses += misses
        self._evictions += evictions
        counters = self.router.counters
        counters.cache_hits += hits
        counters.cache_misses += misses
        counters.cache_evictions += evictions

    # ------------------------------------------------------------ replacement
    def _sweep(self, want: int) -> Sweep:
        """Evict up to ``want`` clean pages; dirty pages the clock passed go to the writer.

        Writing them even when clean pages sufficed is what lets a page that
        was dirtied once leave the cache later instead of squatting forever.
        """
        sweep = self.core.sweep(want)
        self._free(sweep.evicted)
        self._count(evictions=len(sweep.evicted))
        for name, lbas in sweep.dirty.items():
            self._backlog.setdefault(name, set()).update(lbas)
        if sweep.dirty:
            self._kick()
        return sweep

    def _kick(self) -> None:
        if self._pressure is not None:
            self._pressure.set()

    async def _reclaim(self, need: int) -> None:
        """Make ``need`` frames free or raise ``CacheFull``: evict, write dirty, then ask holders."""
        if self._free_count() >= need:
            # The machine's zone ran dry, not our quota: hand some of our frames back to it.
            if not self._sweep(need).evicted:
                raise CacheFull(f"physical memory has no {need} frames for the cache to take")
            return
        dirty = self._sweep(need + self._high - self._free_count()).dirty
        if self._free_count() >= need:
            return
        if dirty:
            await self._write_candidates(dirty)
            return
        if self._writes_in_flight():
            await self._settled()
            return
        if not await self._give_back(need - self._free_count()):
            raise CacheFull(
                f"{need} frames wanted, {self._free_count()} free and every other page is pinned"
            )

    async def _write_candidates(self, dirty: dict[str, list[int]]) -> None:
        for name, lbas in dirty.items():
            try:
                await self._write(self.devices[name], page_runs(lbas, self.devices[name].pages.spp))
            except OSError as exc:
                self.log.warning("writeback before eviction failed", device=name, error=str(exc))

    def _writes_in_flight(self) -> bool:
        return any(self.core.in_flight_writes(name) for name in self.devices)

    async def _reclaimer(self) -> None:
        """Write the dirty pages the clock passed; below low water, reclaim up to high water."""
        assert self._pressure is not None
        while True:
            await self._pressure.wait()
            self._pressure = anyio.Event()
            backlog, self._backlog = self._backlog, {}
            await self._write_candidates({name: list(lbas) for name, lbas in backlog.items()})
            if self._free_count() < self._low:
                self._sweep(self._high - self._free_count())

    async def _give_back(self, pages: int) -> bool:
        """Ask every holder to release about ``pages`` pins; wait (bounded) for their answers.

        Returns whether any pin was released meanwhile. One round at a time: a
        second short request joins the round in progress instead of asking again.
        """
        released = self._released
        round_ = self._round
        if round_ is None:
            round_ = await self._start_round(pages)
            if round_ is None:
                return False
        with anyio.move_on_after(self._giveback_timeout):
            await round_.done.wait()
        self._end_round(round_)
        return self._released > released

    async def _start_round(self, pages: int) -> _GiveBackRound | None:
        round_ = _GiveBackRound(next(self._round_ids), set())
        self._round = self._rounds[round_.request] = round_
        for holder in self._holders:
            try:
                await self.endpoint.send(holder, GiveBack(round_.request, pages))
            except _UNREACHABLE:
                continue
            round_.pending.add(holder)
        if not round_.pending:
            self._end_round(round_)
            return None
        return round_

    def _end_round(self, round_: _GiveBackRound) -> None:
        self._rounds.pop(round_.request, None)
        if self._round is round_:
            self._round = None

    @handles(GiveBackDone)
    async def on_give_back_done(self, env: Envelope, msg: GiveBackDone) -> None:
        """Only a holder that was asked may answer: a forged answer must not end a round early."""
        round_ = self._rounds.get(msg.request)
        asked = round_.pending if round_ is not None else self._holders
        if env.src not in asked:
            self._refuse_pins(env, max(msg.released, 0))
            raise NotPinHolder(
                f"{env.src} answered GiveBack {msg.request}, which did not ask it; refused"
            )
        if round_ is None:
            return  # answered after the wait timed out: the releases still counted
        round_.pending.discard(env.src)
        if not round_.pending:
            round_.done.set()

    # ----------------------------------------------------------------- pins
    @handles(Release)
    async def on_release(self, env: Envelope, msg: Release) -> None:
        """Drop the sender's own pins; pins it does not hold are refused, counted, left alone."""
        self._release(env, msg.device, self._runs(msg.device, msg.pages, msg.runs))

    def _release(self, env: Envelope, device: str, runs: list[tuple[int, int]]) -> None:
        try:
            self._released += self.core.release_runs(device, runs, env.src)
        except CacheError as exc:
            self._released += exc.released
            if isinstance(exc, NotPinHolder):
                self._refuse_pins(env, exc.refused)
            raise

    def _refuse_pins(self, env: Envelope, pins: int) -> None:
        self._pins_refused += pins
        self.router.counters.count_refusal(env.type)
        self.log.warning("pin refusal", src=env.src, message=env.type, pins=pins)

    @handles(MarkDirty)
    async def on_mark_dirty(self, env: Envelope, msg: MarkDirty) -> None:
        runs = self._runs(msg.device, msg.pages, msg.runs)
        try:
            self.core.mark_dirty_runs(msg.device, runs)
        finally:  # the pins go whatever the marking met (the sender has let go of them);
            # dirty pages are never evicted unwritten, so they may go before the write
            if msg.release:
                try:
                    self._release(env, msg.device, self._runs(msg.device, [], msg.release))
                except CacheError as exc:  # as for a posted Release: counted, not the caller's
                    self.log.warning("release with MarkDirty refused", error=str(exc))
        if msg.write and runs:
            device = self._device(msg.device)
            await self._writeback(device, merge_runs(runs, device.pages.spp))

    @handles(Invalidate)
    async def on_invalidate(self, env: Envelope, msg: Invalidate) -> None:
        self._free(self.core.invalidate_runs(msg.device, self._runs(msg.device, msg.pages, msg.runs)))

    def _runs(self, name: str, lbas: list[int], spans: list[PageSpan]) -> list[tuple[int, int]]:
        """Page runs for sector numbers and spans (a holder may name any sector inside a page).

        A page named twice stays named twice (a ``Release`` drops one pin per mention)."""
        grid = self._device(name).pages
        pages = grid.pages_for(lbas)
        runs = page_runs(pages, grid.spp) if len(set(pages)) == len(pages) else [
            (p, 1) for p in pages
        ]
        return runs + grid.runs_for((s.lba, s.count) for s in spans)

    def _device(self, name: str) -> CachedDevice:
        device = self.devices.get(name)
        if device is None:
            raise NoSuchDevice(f"the cache has no device {name!r}")
        return device

    # ---------------------------------------------------------------- writing
    @handles(Writeback)
    async def on_writeback(self, env: Envelope, msg: Writeback) -> None:
        device = self._device(msg.device)
        runs = merge_runs(self._runs(msg.device, msg.pages, msg.runs), device.pages.spp)
        await self._writeback(device, runs or None)
        if msg.flush:
            await self._flush(device)

    @handles(FlushDevice)
    async def on_flush(self, env: Envelope, msg: FlushDevice) -> None:
        device = self._device(msg.device)
        await self._writeback(device, None)
        await self._flush(device)

    async def _flush(self, device: CachedDevice) -> None:
        """Flush the device, unless no write completed since the last flush was sent.

        Every write goes through this cache, so a flush after none adds nothing
        (an fsync's last group is flushed, then ``FlushDevice`` would flush again).
        A write completing while the flush is in flight marks the device again; a
        flush asked while one is in flight waits for it (durable only once it is done).
        """
        name = device.name
        while (pending := self._flushing.get(name)) is not None:  # its caller must not
            await pending.wait()  # return before that flush is done (or flush again if it failed)
        if name in self._flushed:
            return
        self._flushed.add(name)
        done = self._flushing[name] = anyio.Event()
        try:
            await self._command(device, Flush())
        except BaseException:
            self._flushed.discard(name)
            raise
        finally:
            del self._flushing[name]
            done.set()

    async def _writeback(self, device: CachedDevice, runs: list[tuple[int, int]] | None) -> None:
        """Write the pages until none of them is dirty or in flight (writes by others included)."""
        for _ in range(_WRITEBACK_ROUNDS):
            await self._write(device, runs)
            if self.core.in_flight_writes(device.name, runs):
                await self._settled()
            elif not self.core.has_dirty(device.name, runs):
                return

    async def _write(self, device: CachedDevice, runs: list[tuple[int, int]] | None) -> None:
        """Write the dirty present pages among ``runs`` as whole pages, one command per frame run."""
        stores = self.core.start_write(device.name, runs, device.max_pages)
        if not stores:
            return
        errors: list[OSError] = []
        try:
            if len(stores) == 1:  # the usual small write: no task group to start
                await self._store(device, stores[0], errors)
            else:
                async with anyio.create_task_group() as tg:
                    for store in stores:
                        tg.start_soon(self._store, device, store, errors)
        finally:
            self._signal_settled()
        if errors:
            raise DeviceError(f"writing {device.name}: {errors[0]}", _errno_of(errors[0])[0])

    async def _store(self, device: CachedDevice, store: Store, errors: list[OSError]) -> None:
        lba, count, sg = device.pages.parts_command(store.parts)
        try:
            await self._command(device, Write(lba, count, sg))
        except OSError as exc:
            self.core.write_failed(store)
            errors.append(exc)
        else:
            self._write_bytes += count * device.pages.sector_size
            self._flushed.discard(device.name)
            self.core.written(store)

    async def _settled(self) -> None:
        """Wait until some write batch completes."""
        assert self._writes_settled is not None
        await self._writes_settled.wait()

    def _signal_settled(self) -> None:
        if self._writes_settled is not None:
            self._writes_settled.set()
        self._writes_settled = anyio.Event()

    async def _periodic_writeback(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            for device in list(self.devices.values()):
                try:
                    await self._write(device, None)
                except OSError as exc:
                    self.log.warning(
                        "periodic writeback failed", device=device.name, error=str(exc)
                    )

    # ------------------------------------------------------------------ stats
    @handles(GetCacheStats)
    async def on_stats(self, env: Envelope, msg: GetCacheStats) -> CacheStats:
        return self.cache_stats()

    def cache_stats(self) -> CacheStats:
        census = self.core.census()
        return CacheStats(
            pages_total=self.capacity,
            pages_present=census.present,
            pages_dirty=census.dirty,
            pages_pinned=census.pinned,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            driver_commands=self._commands,
            read_bytes=self._read_bytes,
            write_bytes=self._write_bytes,
            pins_refused=self._pins_refused,
        )


__all__ = ["CacheServer", "CachedDevice"]
