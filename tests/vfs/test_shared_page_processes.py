"""Real concurrency: readers in other OS processes race the kernel over shared pages.

The page is a shared anonymous mmap created before ``fork``, so the readers see every
store of the parent as it happens, exactly like a process seeing its read-only control
page change under it. Nothing here is timed: the readers run for a bounded time and
report what they saw; the assertions are about correctness and that work was done.
"""

from __future__ import annotations

import mmap
import multiprocessing
import random
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import NamedTuple

from servers.vfs.filemap import (
    FILEMAP_SIZE,
    FileMapFull,
    FileMapReader,
    Part,
    PartOverlap,
)
from servers.vfs.filemap_writer import FileMapWriter
from servers.vfs.pages import PAGE_SIZE, FileState, FileStatePage

CTX = multiprocessing.get_context("fork")
READERS = 2
RUN_SECONDS = 2.0
GRACE_SECONDS = 0.1  # a lookup takes microseconds; clearing waits 100 ms after unlinking
UNIT = 4096
UNITS = 512
MIN_LINKED, MAX_LINKED = 32, 128


def base_for(position: int, size: int) -> int:
    """A base derived from the part's range: a reader can check any triple it finds."""
    return (position // UNIT) * 8 + size // UNIT


def plausible(part: Part, position: int) -> bool:
    """The reader-side check: the part holds the position and its triple is self-consistent."""
    return (
        part.contains(position)
        and part.position % UNIT == 0
        and part.size % UNIT == 0
        and part.base == base_for(part.position, part.size)
    )


class ReaderReport(NamedTuple):
    """What one reader process saw."""

    hits: int
    misses: int
    wrong: list[tuple[int, Part]]
    seen: set[Part]


def filemap_reader(page: mmap.mmap, seed: int, deadline: float, out: Connection) -> None:
    """Child process: look up random positions until the deadline, report the answers."""
    view = memoryview(page).toreadonly()
    reader = FileMapReader(view)
    rng = random.Random(seed)
    hits = misses = 0
    wrong: list[tuple[int, Part]] = []
    seen: set[Part] = set()
    while time.monotonic() < deadline:
        for _ in range(256):
            position = rng.randrange(UNITS * UNIT)
            part = reader.lookup(position)
            if part is None:
                misses += 1
            elif plausible(part, position):
                hits += 1
                seen.add(part)
            else:
                wrong.append((position, part))
    out.send(ReaderReport(hits, misses, wrong[:20], seen))
    out.close()


class Kernel:
    """The parent's writer loop: random inserts and removes, clears after the grace period."""

    def __init__(self, page: mmap.mmap) -> None:
        self.writer = FileMapWriter(page)
        self.rng = random.Random(1234)
        self.retired: deque[tuple[float, int]] = deque()
        self.ever: set[Part] = set()
        self.operations = 0

    def step(self) -> None:
        """One update: clear what is due, then insert or remove one part."""
        now = time.monotonic()
        while self.retired and now - self.retired[0][0] > GRACE_SECONDS:
            self.writer.clear_part(self.retired.popleft()[1])
        count = self.writer.count
        if count < MIN_LINKED or (count < MAX_LINKED and self.rng.random() < 0.5):
            self._insert()
        else:
            index, _ = self.rng.choice(list(self.writer.parts()))
            self.writer.remove(index)
            self.retired.append((now, index))
            self.operations += 1

    def _insert(self) -> None:
        """Link a random part, skipping ranges that collide or a map that is full."""
        unit = self.rng.randrange(UNITS)
        size = self.rng.randint(1, 6) * UNIT
        part = Part(unit * UNIT, size, base_for(unit * UNIT, size))
        try:
            self.writer.insert(*part)
        except (PartOverlap, FileMapFull):
            return
        self.ever.add(part)
        self.operations += 1


def test_filemap_readers_in_other_processes_never_see_a_wrong_mapping() -> None:
    """Parent inserts/removes continuously; forked readers verify every part they find."""
    page = mmap.mmap(-1, FILEMAP_SIZE)  # MAP_SHARED | MAP_ANONYMOUS: shared across fork
    kernel = Kernel(page)
    for _ in range(MIN_LINKED):
        kernel.step()
    deadline = time.monotonic() + RUN_SECONDS
    children = []
    for seed in range(READERS):
        receive, send = CTX.Pipe(duplex=False)
        child = CTX.Process(target=filemap_reader, args=(page, seed, deadline, send))
        child.start()
        send.close()
        children.append((child, receive))
    while time.monotonic() < deadline:
        kernel.step()
        time.sleep(0.0002)  # leave the readers CPU on a 2-core machine
    reports = [receive.recv() for _, receive in children]
    for child, _ in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    kernel.writer.release()
    page.close()
    for report in reports:
        assert report.wrong == [], f"wrong mappings seen: {report.wrong}"
        assert report.seen <= kernel.ever
        assert report.hits > 1000 and report.misses > 0
    assert kernel.operations > 500


def consistent_state(size: int) -> FileState:
    """A state whose fields all derive from the size, so a torn snapshot shows."""
    return FileState(size, -(-size // UNIT) * UNIT, size & 0x3F, size * 3, f"file-{size}.bin")


def state_reader(page: mmap.mmap, deadline: float, out: Connection) -> None:
    """Child process: snapshot the state page until the deadline; count torn snapshots."""
    view = FileStatePage(memoryview(page).toreadonly())
    reads = torn = 0
    while time.monotonic() < deadline:
        state = view.read()
        reads += 1
        torn += state != consistent_state(state.size)
    out.send((reads, torn))
    out.close()


def test_state_page_seqlock_across_processes() -> None:
    """The kernel rewrites the state page non-stop; readers never get a torn snapshot."""
    page = mmap.mmap(-1, PAGE_SIZE)
    kernel = FileStatePage(page, writable=True)
    kernel.write(consistent_state(0))
    deadline = time.monotonic() + RUN_SECONDS / 2
    receive, send = CTX.Pipe(duplex=False)
    child = CTX.Process(target=state_reader, args=(page, deadline, send))
    child.start()
    send.close()
    size = 0
    while time.monotonic() < deadline:
        size += 4097 if size % 3 else 1  # names and allocated sizes of varying length
        kernel.write(consistent_state(size))
    reads, torn = receive.recv()
    child.join(timeout=30)
    assert child.exitcode == 0
    kernel.release()
    page.close()
    assert torn == 0
    assert reads > 100
