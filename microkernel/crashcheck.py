"""Checking crash images: fsck's verdict, mount repair, and the files fsynced before the cut.

Given a :class:`~drivers.recording.WriteLog` and a :class:`Journal` of which
files were fsynced when (in log positions), each crash state the log allows
is built in an image file and checked three ways:

1. ``fsck.fat -n`` on the raw image finds nothing beyond what the write order
   may leave behind (:data:`BENIGN`, and the rename window :data:`RENAME_WINDOW`);
2. mounting it read-write with :class:`FatVolume` (the repair) and unmounting
   leaves an image ``fsck.fat -n`` calls clean;
3. every file fsynced before the cut, and not touched since, reads back (after
   the repair) exactly as it was fsynced.

The image file is changed in place, range by range (the prefix advances write
by write; sampled extras and the repair's own writes are undone afterwards),
so a state costs a few small ``pwrite``s rather than a copy of the disk. Used
by the power-cut tests and by ``microkernel torture``; needs ``fsck.fat``.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from drivers.recording import CrashState, LogEntry, WriteLog, crash_states
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume

# What fsck.fat -n may report on a crash image: the dirty flag, lost clusters (and
# the free counts they make wrong), and clusters beyond a file's size (a chain
# extended or trimmed before its entry's size caught up: they are lost clusters
# hanging off a file; no byte of the file is wrong). See docs/fat.md.
BENIGN = (
    re.compile(r"^fsck\.fat \d"),
    re.compile(r"^There are differences between boot sector and its backup"),
    re.compile(r"^This is mostly harmless\. Differences: \(offset:original/backup\)"),
    re.compile(r"^  65:0[01]/0[01]$"),  # BS_Reserved1: the dirty bit, set only in the primary
    re.compile(r"^  Not automatically fixing this\."),
    re.compile(r"Dirty bit is set"),
    re.compile(r"^ *Automatically removing dirty bit"),
    re.compile(r"^Checking "),
    re.compile(r"^Leaving filesystem unchanged"),
    re.compile(r"^/?[^ ].*: \d+ files?, \d+/\d+ clusters$"),
    re.compile(r"^Reclaimed \d+ unused clusters? \(\d+ bytes\)( in \d+ chains?)?\."),
    re.compile(r"^FATs differ but appear to be intact"),
    re.compile(r"^ *Using first FAT\."),
    re.compile(r"^Free cluster summary wrong \(\d+ vs\. really \d+\)"),
    re.compile(r"^ *Auto-correcting\.?"),
    re.compile(r"^ *Fix\? no$"),
    re.compile(r"^ *File size is \d+ bytes, cluster chain length is > \d+ bytes\."),
    re.compile(r"^ *Truncating file to \d+ bytes\."),
    re.compile(r"^ *Perform changes \? .*"),
    re.compile(r"^\S.*$"),  # a path line introducing the indented message below it
)


def fsck(path: Path) -> tuple[int, list[str]]:
    done = subprocess.run(["fsck.fat", "-n", str(path)], capture_output=True, timeout=60,
                          check=False)
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    return done.returncode, [line for line in text.splitlines() if line.strip()]


# A rename is cut between writing the new entry and removing the old one: both names
# share the file's clusters. No order of two separate sector writes avoids this
# window (the other order loses the file); mount repair keeps the new name (the old one
# is marked; docs/fat.md).
RENAME_WINDOW = (
    re.compile(r"^/?[^ ].*$"),
    re.compile(r"^ *share clusters\.$"),
    re.compile(r"^ *Truncating second to 0 bytes\.$"),
    # fsck's own consequence: having cut the second name to nothing, its size is too big
    re.compile(r"^ *File size is \d+ bytes, cluster chain length is 0 bytes\.$"),
    re.compile(r"^ *Truncating file to 0 bytes\.$"),
    # a directory moved to another parent has one '..': under one of its two names it is wrong
    re.compile(r"^ *Invalid '\.\.' entry in the second slot\. Fixing\.$"),
)


def is_rename_window(bad: list[str]) -> bool:
    return any("share clusters" in line for line in bad) and all(
        any(p.search(line) for p in RENAME_WINDOW) for line in bad)


def damage(lines: list[str]) -> list[str]:
    """The fsck lines that are not on the benign list, with the path line they belong to."""
    out = []
    for n, line in enumerate(lines):
        if any(p.search(line) for p in BENIGN[:-1]):
            continue
        if BENIGN[-1].search(line):  # a path: damage only if the message under it is
            follow = lines[n + 1] if n + 1 < len(lines) else ""
            if follow.startswith(" ") and not any(p.search(follow) for p in BENIGN[:-1]):
                out.append(line)
            continue
        out.append(line)
    return out


@dataclass(slots=True)
class Synced:
    """A file's content as of an fsync that ended at log position ``at``."""

    path: str
    data: bytes
    at: int
    touched: int | None = None  # log position where the next change of the file began


@dataclass(slots=True)
class Journal:
    """What the workload did, in log positions, for the checks of each crash state."""

    log: WriteLog
    synced: list[Synced] = field(default_factory=list)
    _live: dict[str, Synced] = field(default_factory=dict)
    steps: int = 0

    def touch(self, *paths: str) -> None:
        """A change of these files begins now: their last fsync no longer vouches for them."""
        at = self.log.mark()
        self.steps += 1
        for p in paths:
            s = self._live.pop(p, None)
            if s is not None:
                s.touched = at

    def fsynced(self, path: str, data: bytes) -> None:
        s = Synced(path, data, self.log.mark())
        self.synced.append(s)
        self._live[path] = s

    def unmounted(self, files: dict[str, bytes]) -> None:
        """The workload ended with a clean unmount: every file it left is on the disk as left.

        Vouched for from the log's last write on (only flushes follow it, which
        change no byte): the image every check builds there is the image after
        the unmount, so a file whose bytes never reached the disk, fsynced or
        not, is found there.
        """
        end = next((n + 1 for n in range(len(self.log.entries) - 1, -1, -1)
                    if not self.log.entries[n].is_flush), 0)
        self.synced.extend(Synced(path, data, end) for path, data in files.items())

    def vouched(self, state: CrashState) -> list[Synced]:
        """Files fsynced wholly before the state's durable prefix, untouched in its window."""
        return [s for s in self.synced if s.at <= state.durable
                and (s.touched is None or s.touched >= state.window_end)]


# ------------------------------------------------------------------ the checks
class _TrackedIO(FileSectorIO):
    """A SectorIO that remembers the byte ranges it wrote (so they can be undone)."""

    def __init__(self, path: Path, written: list[tuple[int, int]]) -> None:
        super().__init__(path)
        self._written = written

    async def write(self, lba: int, data: bytes) -> None:
        await super().write(lba, data)
        self._written.append((lba * self.sector_size, len(data)))


class CutImage:
    """The image file of the crash state being checked, kept in step with the log."""

    def __init__(self, path: Path, log: WriteLog) -> None:
        self.path = path
        self.log = log
        self.prefix = bytearray(log.base)  # the image after ``position`` log entries
        self.position = 0
        path.write_bytes(self.prefix)
        self._fd = os.open(path, os.O_RDWR)
        self.changed: list[tuple[int, int]] = []  # ranges that differ from ``prefix``

    def close(self) -> None:
        os.close(self._fd)

    def advance(self, upto: int) -> None:
        if upto < self.position:
            raise ValueError("crash states must come in order of their durable prefix")
        for entry in self.log.entries[self.position:upto]:
            self._apply(entry, None, into_prefix=True)
        self.position = upto

    def overlay(self, extra: Iterable[tuple[int, tuple[int, ...] | None]]) -> None:
        for index, pieces in extra:
            self._apply(self.log.entries[index], pieces, into_prefix=False)

    def _apply(self, entry: LogEntry, pieces: tuple[int, ...] | None, *, into_prefix: bool) -> None:
        data = entry.data
        if data is None:
            return
        unit = 4096
        parts = [(0, data)] if pieces is None else [
            (p * unit, data[p * unit:(p + 1) * unit]) for p in pieces]
        for rel, chunk in parts:
            at = entry.offset + rel
            os.pwrite(self._fd, chunk, at)
            if into_prefix:
                self.prefix[at:at + len(chunk)] = chunk
            else:
                self.changed.append((at, len(chunk)))

    def restore(self) -> None:
        for at, n in self.changed:
            os.pwrite(self._fd, self.prefix[at:at + n], at)
        self.changed.clear()


@dataclass(slots=True)
class Tally:
    states: int = 0
    prefixes: int = 0
    reorders: int = 0
    torn: int = 0
    damaged: int = 0
    rename_windows: int = 0
    repaired: int = 0
    repair_failed: int = 0
    fsynced_checked: int = 0
    fsynced_lost: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.states} states ({self.prefixes} cut points, {self.reorders} reorderings,"
                f" {self.torn} torn); damaged {self.damaged}; rename windows "
                f"{self.rename_windows}; repaired {self.repaired}, repair "
                f"failed {self.repair_failed}; fsynced files checked {self.fsynced_checked}, "
                f"lost {self.fsynced_lost}")


async def check_all(journal: Journal, workdir: Path, *, seed: int = 0, samples: int = 3,
                    stride: int = 1, keep: int = 5) -> Tally:
    """Check every ``stride``-th crash state (``samples`` reorderings per epoch among them)."""
    states = sorted(crash_states(journal.log, random.Random(seed), samples=samples),
                    key=lambda s: (s.durable, s.kind != "prefix"))
    end = len(journal.log.entries)
    chosen = [s for n, s in enumerate(states) if not n % stride or s.durable == end]
    return await check_states(journal, workdir, chosen, keep=keep)


async def check_states(journal: Journal, workdir: Path, states: Iterable[CrashState], *,
                       keep: int = 5) -> Tally:
    """Check the given crash states, which must come in order of their durable prefix."""
    tally = Tally()
    img = CutImage(workdir / "cut.img", journal.log)
    try:
        for state in states:
            await _check_state(img, journal, state, tally, keep)
    finally:
        img.close()
    return tally


async def _check_state(img: CutImage, journal: Journal, state: CrashState, tally: Tally,
                       keep: int) -> None:
    img.advance(state.durable)
    img.overlay(state.extra)
    tally.states += 1
    if state.kind == "prefix":
        tally.prefixes += 1
    elif state.kind == "torn":
        tally.torn += 1
    else:
        tally.reorders += 1
    where = f"{state.kind} durable={state.durable} extra={list(state.extra)[:6]}"
    _, lines = fsck(img.path)
    bad = damage(lines)
    if bad and is_rename_window(bad):
        tally.rename_windows += 1
    elif bad:
        tally.damaged += 1
        if len(tally.failures) < keep:
            tally.failures.append(f"{where}: raw fsck: {bad[:8]}")
    written: list[tuple[int, int]] = []
    try:
        await _repair(img.path, written)
        code, lines = fsck(img.path)
        if code != 0:
            tally.repair_failed += 1
            if len(tally.failures) < keep:
                tally.failures.append(f"{where}: after repair: {damage(lines)[:4] or lines[:4]}")
        else:
            tally.repaired += 1
        await _check_synced(img.path, journal.vouched(state), tally, where, keep)
    except OSError as exc:
        tally.repair_failed += 1
        if len(tally.failures) < keep:
            tally.failures.append(f"{where}: mount/repair raised {exc!r}")
    finally:
        img.changed.extend(written)
        img.restore()


async def _repair(path: Path, written: list[tuple[int, int]]) -> None:
    io = _TrackedIO(path, written)
    try:
        vol = await FatVolume.mount(io)
        await vol.unmount()
    finally:
        io.close()


async def _check_synced(path: Path, synced: list[Synced], tally: Tally, where: str,
                        keep: int) -> None:
    if not synced:
        return
    io = FileSectorIO(path, read_only=True)
    try:
        vol = await FatVolume.mount(io, read_only=True)
        for s in synced:
            tally.fsynced_checked += 1
            try:
                got = await vol.read(s.path)
            except OSError as exc:
                got = repr(exc).encode()
            if got != s.data:
                tally.fsynced_lost += 1
                if len(tally.failures) < keep:
                    tally.failures.append(f"{where}: {s.path} fsynced {len(s.data)} bytes, "
                                          f"reads {len(got)} bytes")
    finally:
        io.close()
