"""A recording block device (like Linux's dm-log-writes) and the replay that rebuilds crash images.

:func:`recording` wraps any :class:`~drivers.base.BlockDriver` class: the
wrapper logs every completed write (its byte offset and the bytes that reached
the medium) and every flush, in completion order, into a :class:`WriteLog`. It
also keeps the device's bytes as they were when it was opened, so the log can
be replayed from the start. ``RecordingRamDisk`` is the ramdisk so wrapped
(``driver="drivers.recording:RecordingRamDisk"``); a running system's log is
``system.server(device).write_log``.

The replay is pure: :func:`image_after` rebuilds the disk after any prefix of
the log (a power cut after write *k*). A flush makes the writes completed
before it was issued durable; the writes since the last flush were in the
disk's volatile cache, so a power cut may have kept any subset of them, in any
order, and a write of several 4 KiB pages may be torn at a page boundary.
:func:`crash_states` enumerates every prefix and, for each stretch of writes
between two flushes, a bounded random sample of such reordered and torn
states (as CrashMonkey does).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from drivers.base import BlockDriver
from drivers.ramdisk import RamDisk

TORN_UNIT = 4096  # a power cut keeps or loses each 4 KiB piece of a write as a whole


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One completed command: a write of ``data`` at byte ``offset``, or a flush (``data`` None)."""

    offset: int
    data: bytes | None

    @property
    def is_flush(self) -> bool:
        return self.data is None


@dataclass(slots=True)
class WriteLog:
    """The device's initial bytes and its writes and flushes in completion order."""

    base: bytes = b""
    entries: list[LogEntry] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:  # worker threads complete commands concurrently
            self.entries.append(LogEntry(offset, data))

    def flush(self) -> None:
        with self._lock:
            self.entries.append(LogEntry(0, None))

    def mark(self) -> int:
        """The log position now: a cut at this position keeps exactly what completed so far."""
        with self._lock:
            return len(self.entries)

    @property
    def writes(self) -> int:
        return sum(1 for e in self.entries if not e.is_flush)


class Recorder:
    """What every recording driver has: its :class:`WriteLog` (test with ``isinstance``)."""

    write_log: WriteLog


def recording(cls: type[BlockDriver]) -> type[BlockDriver]:
    """A subclass of ``cls`` (and of :class:`Recorder`) that logs its writes and flushes."""

    class Recording(Recorder, cls):  # type: ignore[valid-type,misc]

        def open_backing(self, image: str | None, size: int | None,
                         read_only: bool) -> tuple[int, int]:
            fd, nbytes = super().open_backing(image, size, read_only)
            self.write_log = WriteLog(base=os.pread(fd, nbytes, 0))
            return fd, nbytes

        def _dma(self, views: list[memoryview], offset: int, write: bool, fua: bool) -> None:
            super()._dma(views, offset, write, fua)
            if write:
                self.write_log.write(offset, b"".join(views))
                if fua:
                    self.write_log.flush()

        def flush_backing(self) -> None:
            # Logged when issued: a write completing during the flush is not covered by it.
            self.write_log.flush()
            super().flush_backing()

    Recording.__name__ = Recording.__qualname__ = f"Recording{cls.__name__}"
    Recording.model = f"recording {cls.model}"
    return Recording


RecordingRamDisk = recording(RamDisk)


# ------------------------------------------------------------------ replay
def apply(image: bytearray, entry: LogEntry, pieces: Sequence[int] | None = None) -> None:
    """Apply one write (or only the listed 4 KiB ``pieces`` of it, for a torn write)."""
    data = entry.data
    if data is None:
        return
    if pieces is None:
        image[entry.offset:entry.offset + len(data)] = data
        return
    for p in pieces:
        chunk = data[p * TORN_UNIT:(p + 1) * TORN_UNIT]
        at = entry.offset + p * TORN_UNIT
        image[at:at + len(chunk)] = chunk


def image_after(log: WriteLog, upto: int) -> bytearray:
    """The disk after the first ``upto`` log entries reached the medium, in log order."""
    image = bytearray(log.base)
    for entry in log.entries[:upto]:
        apply(image, entry)
    return image


@dataclass(frozen=True, slots=True)
class CrashState:
    """A disk a power cut can leave: the log up to ``durable`` plus some of the next writes.

    ``extra`` lists (entry index, pieces or None for the whole write) applied in
    that order after the first ``durable`` entries. ``window_end`` is the log
    position of the last write the state may contain.
    """

    durable: int
    extra: tuple[tuple[int, tuple[int, ...] | None], ...]
    window_end: int
    kind: str  # "prefix", "reorder" or "torn"

    def build(self, log: WriteLog) -> bytearray:
        image = image_after(log, self.durable)
        for index, pieces in self.extra:
            apply(image, log.entries[index], pieces)
        return image


def epochs(log: WriteLog) -> list[tuple[int, int]]:
    """(first, end) log positions of each stretch of writes between flushes."""
    out: list[tuple[int, int]] = []
    start = 0
    for i, entry in enumerate(log.entries):
        if entry.is_flush:
            if i > start:
                out.append((start, i))
            start = i + 1
    if len(log.entries) > start:
        out.append((start, len(log.entries)))
    return out


def crash_states(log: WriteLog, rng: random.Random, *, samples: int = 4,
                 prefixes: bool = True) -> Iterator[CrashState]:
    """Every prefix of the log, then ``samples`` reorderings and torn writes per epoch."""
    if prefixes:
        for k in range(len(log.entries) + 1):
            if k == 0 or not log.entries[k - 1].is_flush:
                yield CrashState(k, (), k, "prefix")
    for start, end in epochs(log):
        writes = list(range(start, end))
        if len(writes) < 2 and not _tearable(log, writes):
            continue
        for _ in range(samples):
            yield _sample(log, rng, start, writes)


def _tearable(log: WriteLog, writes: list[int]) -> bool:
    return any(len(log.entries[i].data or b"") > TORN_UNIT for i in writes)


def _sample(log: WriteLog, rng: random.Random, start: int, writes: list[int]) -> CrashState:
    """A random subset of an epoch's writes in a random order, one of them maybe torn."""
    kept = [i for i in writes if rng.random() < 0.5] or [rng.choice(writes)]
    rng.shuffle(kept)
    extra: list[tuple[int, tuple[int, ...] | None]] = [(i, None) for i in kept]
    kind = "reorder"
    big = [n for n, (i, _) in enumerate(extra) if len(log.entries[i].data or b"") > TORN_UNIT]
    if big and rng.random() < 0.5:
        n = rng.choice(big)
        index = extra[n][0]
        count = -(-len(log.entries[index].data or b"") // TORN_UNIT)
        pieces = tuple(sorted(rng.sample(range(count), rng.randrange(1, count))))
        extra[n] = (index, pieces)
        kind = "torn"
    return CrashState(start, tuple(extra), writes[-1] + 1, kind)


def write_image(path: str | os.PathLike[str], image: bytes | bytearray) -> None:
    with open(path, "wb") as f:
        f.write(image)


__all__ = [
    "TORN_UNIT",
    "CrashState",
    "LogEntry",
    "Recorder",
    "RecordingRamDisk",
    "WriteLog",
    "crash_states",
    "epochs",
    "image_after",
    "recording",
    "write_image",
]
