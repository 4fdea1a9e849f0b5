"""The block driver base: one server per disk, DMA straight into page frames.

Every driver speaks :mod:`drivers.protocol`. This base does what all of them
share, so a controller model only says how it turns a scatter/gather list into
the memory its "hardware" touches (:meth:`BlockDriver.plan_dma`):

* the backing store: an image file (or block device) opened ``O_RDWR``;
  DMA is ``os.preadv``/``os.pwritev`` straight into views of the RAM memfd;
* geometry: logical/physical sector sizes and alignment offset validated once,
  the MBR parsed once (:mod:`drivers.mbr`);
* request validation: sector range, transfer size, sg shape, segments in RAM
  (all typed error replies, never a crash);
* concurrency: ``concurrent = True`` so control messages (``GetStats``,
  ``InjectFault``) are answered while commands are in flight; a
  ``CapacityLimiter`` of ``queue_depth`` command slots models the controller's
  queue, and the syscalls run in worker threads so commands really overlap;
* staging: bounce buffers and PIO are the same mechanism, a list of
  (device-side buffer, caller's memory) pairs copied through
  :meth:`PhysicalMemory.copy`, the one counted copy path;
* fault injection: EIO on sector ranges, latency, hang;
* counters: the system-wide ones and per-driver :class:`DriverStats`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from drivers.errors import (
    BadRequest,
    DriverConfigError,
    DriverStopping,
    GeometryError,
    MediumError,
    OutOfRange,
    ReadOnlyDevice,
)
from drivers.mbr import parse_mbr
from drivers.protocol import (
    BlockRequest,
    DriverStats,
    Flush,
    Geometry,
    GetStats,
    Identify,
    InjectFault,
    IoDone,
    Partition,
    Read,
    Segment,
    Write,
)
from drivers.sg import merge_contiguous, split_at_boundaries
from microkernel.ipc import Envelope, Router
from microkernel.memory import PAGE_SIZE, OutOfFrames, PhysicalMemory, Zone
from microkernel.server import Server, handles
from microkernel.trace import current_corr

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
ImagePath = str | os.PathLike[str]
Transfer = Callable[[int, Sequence[memoryview], int], int]


@dataclass(slots=True)
class DmaPlan:
    """What one command's "hardware" touches.

    ``views`` are the iovecs handed to ``preadv``/``pwritev`` (frames, bounce
    frames or a kernel buffer). ``staged`` pairs a device-side buffer with the
    caller's memory it stands for; they are copied (and counted under
    ``reason``) before a write or after a read. ``frames`` are borrowed frames
    (bounce buffers, PRP list pages) released when the command ends.
    """

    views: list[memoryview]
    staged: list[tuple[memoryview, memoryview]] = field(default_factory=list)
    reason: str = "bounce"
    frames: list[int] = field(default_factory=list)


def transfer_all(op: Transfer, fd: int, views: Sequence[memoryview], offset: int) -> int:
    """Run ``preadv``/``pwritev`` until every iovec is done; a zero return is a short image.

    Batches respect IOV_MAX, and a partial transfer resumes where it stopped
    (regular files rarely do that, block devices and signals may).
    """
    pending = list(views)
    done = 0
    while pending:
        n = op(fd, pending[:IOV_MAX], offset + done)
        if n <= 0:
            raise MediumError(
                f"short transfer at byte {offset + done}: the image ends before its geometry does"
            )
        done += n
        pending = _advance(pending, n)
    return done


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes from a list of iovecs."""
    i = 0
    while i < len(views) and n >= len(views[i]):
        n -= len(views[i])
        i += 1
    rest = views[i:]
    if rest and n:
        rest[0] = rest[0][n:]
    return rest


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def validate_geometry(logical: int, physical: int, alignment_offset: int) -> None:
    """Sector sizes are powers of two, physical a multiple of logical, offset inside one."""
    if not _is_pow2(logical) or not 512 <= logical <= PAGE_SIZE:
        raise GeometryError(f"logical sector size {logical} is not a power of two in 512..4096")
    if not _is_pow2(physical) or not logical <= physical <= 65536:
        raise GeometryError(
            f"physical sector size {physical} is not a power of two in {logical}..65536"
        )
    per_physical = physical // logical
    if not 0 <= alignment_offset < per_physical:
        raise GeometryError(
            f"alignment offset {alignment_offset} must be 0..{per_physical - 1} logical sectors"
        )


class BlockDriver(Server):
    """Base of every block driver server. Subclasses set the controller limits below."""

    protocol = BlockRequest
    concurrent = True
    model: str = "block device"
    dma_bits: int = 64
    max_transfer: int = 1 << 20
    # Transfers up to this size complete inline on the event loop: a worker-thread hop
    # costs tens of microseconds, more than a small pread from the host's page cache.
    inline_transfer: int = 64 * 1024
    queue_depth: int = 1
    max_segments: int = 256

    def __init__(
        self,
        name: str,
        router: Router,
        memory: PhysicalMemory,
        image: ImagePath | None,
        *,
        logical_sector_size: int = 512,
        physical_sector_size: int = 4096,
        alignment_offset: int = 0,
        size: int | None = None,
        read_only: bool = False,
        faults: InjectFault | None = None,
        **options: Any,
    ) -> None:
        if options:
            raise DriverConfigError(
                f"{type(self).__name__} does not understand option(s) {', '.join(sorted(options))}"
            )
        validate_geometry(logical_sector_size, physical_sector_size, alignment_offset)
        if faults is not None:
            _validate_faults(faults)
        self.memory = memory
        self.image = None if image is None else os.fspath(image)
        self.logical_sector_size = logical_sector_size
        self.physical_sector_size = physical_sector_size
        self.alignment_offset = alignment_offset
        self.read_only = read_only
        self.fd, disk_bytes = self.open_backing(self.image, size, read_only)
        try:
            self.total_sectors = self._sectors_of(disk_bytes)
            self.partitions = self._read_partitions()
            super().__init__(name, router)
        except BaseException:
            os.close(self.fd)
            raise
        self._fd_open = True
        self._slots = anyio.CapacityLimiter(self.queue_depth)
        self._threads = anyio.CapacityLimiter(self.queue_depth)
        self._faults = InjectFault()
        self._unhang = anyio.Event()
        self._stopping = False
        self._in_flight = self._max_in_flight = 0
        self._borrowers = 0  # commands holding borrowed frames (bounce buffers, PRP lists)
        self._frames_returned = anyio.Event()
        self._stats = dict.fromkeys(
            ("commands", "read_bytes", "write_bytes", "partial", "bounce", "pio"), 0
        )
        if faults is not None:
            self.set_faults(faults)

    # ------------------------------------------------------------------ backing store
    def open_backing(self, image: str | None, size: int | None, read_only: bool) -> tuple[int, int]:
        """Open the image; returns (fd, disk size in bytes). ``size`` may cap the file's size."""
        if image is None:
            raise DriverConfigError(f"{type(self).__name__} needs a disk image (image=None given)")
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(image, flags)
        file_bytes = os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for block devices
        if size is not None and not 0 < size <= file_bytes:
            os.close(fd)
            raise DriverConfigError(f"size={size} does not fit the {file_bytes}-byte image {image}")
        return fd, file_bytes if size is None else size

    def flush_backing(self) -> None:
        """Make completed writes durable (runs in a worker thread)."""
        if not self.read_only:
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the backing store (after :meth:`stop`, or for a driver that never served)."""
        if self._fd_open:
            self._fd_open = False
            os.close(self.fd)

    def _sectors_of(self, disk_bytes: int) -> int:
        lss = self.logical_sector_size
        if disk_bytes < lss or disk_bytes % lss:
            raise GeometryError(
                f"a disk of {disk_bytes} bytes is not a whole number of {lss}-byte sectors"
            )
        return disk_bytes // lss

    def _read_partitions(self) -> list[Partition]:
        """Parse the MBR once at construction (sector 0 read directly, it is not file data)."""
        return parse_mbr(os.pread(self.fd, 512, 0), self.total_sectors)

    # ---------------------------------------------------------------------- geometry
    def geometry(self) -> Geometry:
        return Geometry(
            model=self.model,
            logical_sector_size=self.logical_sector_size,
            physical_sector_size=self.physical_sector_size,
            alignment_offset=self.alignment_offset,
            total_sectors=self.total_sectors,
            dma_bits=self.dma_bits,
            max_transfer=self.max_transfer,
            queue_depth=self.queue_depth,
            max_segments=self.max_segments,
            partitions=list(self.partitions),
        )

    # ------------------------------------------------------------------------ handlers
    @handles(Identify)
    async def _on_identify(self, env: Envelope, msg: Identify) -> Geometry:
        await self._wait_unless_hung()
        return self.geometry()

    @handles(Read)
    async def _on_read(self, env: Envelope, msg: Read) -> IoDone:
        return await self._io(msg.lba, msg.count, msg.sg, write=False, fua=False)

    @handles(Write)
    async def _on_write(self, env: Envelope, msg: Write) -> IoDone:
        if self.read_only:
            raise ReadOnlyDevice(f"{self.name} is read-only; write of sector {msg.lba} refused")
        return await self._io(msg.lba, msg.count, msg.sg, write=True, fua=msg.fua)

    @handles(Flush)
    async def _on_flush(self, env: Envelope, msg: Flush) -> IoDone:
        async with self._command():
            await anyio.to_thread.run_sync(self.flush_backing, limiter=self._threads)
        self._stats["commands"] += 1
        return IoDone(0, 0)

    @handles(InjectFault)
    async def _on_inject(self, env: Envelope, msg: InjectFault) -> None:
        self.set_faults(msg)

    @handles(GetStats)
    async def _on_stats(self, env: Envelope, msg: GetStats) -> DriverStats:
        return self.driver_stats()

    def driver_stats(self) -> DriverStats:
        s = self._stats
        return DriverStats(
            commands=s["commands"],
            read_bytes=s["read_bytes"],
            write_bytes=s["write_bytes"],
            partial_sector_writes=s["partial"],
            bounce_bytes=s["bounce"],
            pio_bytes=s["pio"],
            max_in_flight=self._max_in_flight,
        )

    # ------------------------------------------------------------------- fault injection
    def set_faults(self, faults: InjectFault) -> None:
        """Replace the fault configuration (``InjectFault()`` clears every fault)."""
        _validate_faults(faults)
        if faults.hang and not self._faults.hang:
            self._unhang = anyio.Event()
        elif not faults.hang:
            self._unhang.set()
        self._faults = faults

    async def _wait_unless_hung(self) -> None:
        """A hung device simply never answers; only clearing the fault or stopping releases it."""
        if self._faults.hang:
            await self._unhang.wait()
        if self._stopping:
            raise DriverStopping(f"{self.name} is shutting down")

    def _check_medium(self, lba: int, count: int, write: bool) -> None:
        faults = self._faults
        if faults.fail_writes_only and not write:
            return
        for start, n in faults.fail_ranges:
            if start < lba + count and lba < start + n:
                op = "write" if write else "read"
                raise MediumError(
                    f"{self.name}: unrecoverable {op} error in sectors {lba}..{lba + count - 1}"
                )

    # ---------------------------------------------------------------------- the I/O path
    @asynccontextmanager
    async def _command(self) -> AsyncIterator[None]:
        """Hold one of ``queue_depth`` command slots; faults delay or hang the command here."""
        async with self._slots:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                await self._wait_unless_hung()
                if self._faults.latency_s:
                    await anyio.sleep(self._faults.latency_s)
                yield
            finally:
                self._in_flight -= 1

    async def _io(
        self, lba: int, count: int, sg: list[Segment], *, write: bool, fua: bool
    ) -> IoDone:
        nbytes = self.validate_request(lba, count, sg)
        async with self._command():
            self._check_medium(lba, count, write)
            plan = DmaPlan([])
            try:
                plan = await self._plan(sg, write=write)
                tracer = self.router.tracer
                start = time.monotonic_ns() if tracer.enabled else 0
                await self._execute(plan, lba * self.logical_sector_size, write=write, fua=fua)
                if tracer.enabled:  # the transfer itself, apart from queueing and planning
                    tracer.span(self.name, "dma", 0, current_corr.get(), start, time.monotonic_ns())
            finally:
                self._give_back(plan)
        self._account(lba, count, nbytes, write)
        return IoDone(lba, count)

    async def _plan(self, sg: list[Segment], *, write: bool) -> DmaPlan:
        """Plan the command; when the low zone has no bounce frames right now, wait for this
        driver's other commands to give theirs back rather than fail (ENOMEM only when no
        other command holds any: then nothing would ever come back)."""
        while True:
            plan = DmaPlan([])
            try:
                self.plan_dma(sg, plan, write=write)
            except OutOfFrames:
                self.memory.release(plan.frames)
                if not self._borrowers:
                    raise
                await self._frames_returned.wait()
                continue
            except BaseException:
                self.memory.release(plan.frames)
                raise
            if plan.frames:
                self._borrowers += 1
            return plan

    def _give_back(self, plan: DmaPlan) -> None:
        if not plan.frames:
            return
        self.memory.release(plan.frames)
        plan.frames = []
        self._borrowers -= 1
        self._frames_returned.set()
        self._frames_returned = anyio.Event()

    def validate_request(self, lba: int, count: int, sg: Sequence[Segment]) -> int:
        """Common checks; returns the byte count. Controller-specific sg rules come in plan_dma."""
        if lba < 0 or count <= 0:
            raise BadRequest(f"invalid request: lba={lba} count={count}")
        if lba + count > self.total_sectors:
            raise OutOfRange(
                f"sectors {lba}..{lba + count - 1} lie beyond the end of {self.name} "
                f"({self.total_sectors} sectors)"
            )
        nbytes = count * self.logical_sector_size
        if nbytes > self.max_transfer:
            raise BadRequest(f"{nbytes}-byte transfer exceeds the maximum of {self.max_transfer}")
        if not 0 < len(sg) <= self.max_segments:
            raise BadRequest(f"{len(sg)} sg segments; this controller takes 1..{self.max_segments}")
        lengths = [seg.length for seg in sg]
        if min(lengths) <= 0 or min([seg.phys for seg in sg]) < 0:
            raise BadRequest("sg segments must have a positive length and address")
        total = sum(lengths)
        if total != nbytes:
            raise BadRequest(f"sg describes {total} bytes but {count} sectors are {nbytes} bytes")
        return nbytes

    def plan_dma(self, sg: Sequence[Segment], plan: DmaPlan, *, write: bool) -> None:
        """Fill ``plan``: how the controller reaches the caller's memory.

        The default reaches every segment directly (segments that continue
        each other in memory through one iovec). Frames borrowed on the way
        go into ``plan.frames`` at once, so they are released even when a later
        check rejects the request.
        """
        plan.views = self.segment_views(merge_contiguous(sg))

    def segment_views(self, sg: Sequence[Segment]) -> list[memoryview]:
        """Views of the caller's segments (``BadAddress`` when one is not RAM)."""
        view = self.memory.view
        return [view(seg.phys, seg.length) for seg in sg]

    def bounce_unreachable(self, sg: Sequence[Segment], plan: DmaPlan) -> list[Segment]:
        """Replace memory beyond the DMA mask by low-zone bounce frames (recorded in ``plan``).

        Returns the segments the controller will really address. Each piece of
        an unreachable segment gets its own bounce frame, so segments of any
        size and alignment work.
        """
        limit = 1 << self.dma_bits
        out: list[Segment] = []
        for seg in sg:
            if seg.phys + seg.length <= limit:
                out.append(seg)
                continue
            for piece in split_at_boundaries([seg], PAGE_SIZE):
                (frame,) = self.memory.alloc(self.name, 1, Zone.LOW)
                plan.frames.append(frame)
                plan.staged.append(
                    (
                        self.memory.view(frame, piece.length),
                        self.memory.view(piece.phys, piece.length),
                    )
                )
                out.append(Segment(frame, piece.length))
        return out

    async def _execute(self, plan: DmaPlan, offset: int, *, write: bool, fua: bool) -> None:
        if write:
            self._stage(plan, to_device=True)
        if not fua and sum(v.nbytes for v in plan.views) <= self.inline_transfer:
            self._dma(plan.views, offset, write, fua)
        else:
            await anyio.to_thread.run_sync(
                self._dma, plan.views, offset, write, fua, limiter=self._threads
            )
        if not write:
            self._stage(plan, to_device=False)

    def _dma(self, views: list[memoryview], offset: int, write: bool, fua: bool) -> None:
        """The "hardware": runs in a worker thread, touches only the iovecs it was given."""
        transfer_all(os.pwritev if write else os.preadv, self.fd, views, offset)
        if write and fua:
            os.fdatasync(self.fd)

    def _stage(self, plan: DmaPlan, *, to_device: bool) -> None:
        """Counted copies between device-side buffers and the caller's memory."""
        moved = 0
        for device, caller in plan.staged:
            if to_device:
                moved += self.memory.copy(device, caller, reason=plan.reason)
            else:
                moved += self.memory.copy(caller, device, reason=plan.reason)
        if plan.reason == "bounce":
            self.router.counters.dma_bounce_bytes += moved
            self._stats["bounce"] += moved
        elif plan.reason == "pio":
            self._stats["pio"] += moved

    def _account(self, lba: int, count: int, nbytes: int, write: bool) -> None:
        counters = self.router.counters
        self._stats["commands"] += 1
        if not write:
            counters.disk_read_bytes += nbytes
            self._stats["read_bytes"] += nbytes
            return
        counters.disk_write_bytes += nbytes
        self._stats["write_bytes"] += nbytes
        if self.is_partial_write(lba, count):
            counters.partial_sector_writes += 1
            self._stats["partial"] += 1

    def is_partial_write(self, lba: int, count: int) -> bool:
        """Does a write start or end inside a physical sector (a read-modify-write on real disks)?"""
        per_physical = self.physical_sector_size // self.logical_sector_size
        first = (lba - self.alignment_offset) % per_physical
        end = (lba + count - self.alignment_offset) % per_physical
        return bool(first or end)

    # ------------------------------------------------------------------------- lifecycle
    async def teardown(self) -> None:
        """Release hung commands (they fail with ESHUTDOWN) and make written data durable."""
        self._stopping = True
        self._unhang.set()
        if self._fd_open:
            await anyio.to_thread.run_sync(self.flush_backing)

    async def stop(self) -> None:
        await super().stop()
        self.close()

    async def restart(self) -> None:
        """After a crash nothing needs resetting: slots and borrowed frames are released in finally."""


def _validate_faults(faults: InjectFault) -> None:
    if faults.latency_s < 0 or any(lba < 0 or n <= 0 for lba, n in faults.fail_ranges):
        raise BadRequest(f"invalid fault injection {faults!r}")


__all__ = [
    "IOV_MAX",
    "BlockDriver",
    "DmaPlan",
    "ImagePath",
    "transfer_all",
    "validate_geometry",
]
