"""The legacy copying system calls ``Read`` and ``Write`` of the kernel file driver.

They are the only system calls that carry file data, kept so the benefit of
the mapping can be measured on the same system: every byte they move is
counted in ``bytes_copied``. Ranges are checked first (EINVAL for a negative
or overflowing offset or size).
"""

from __future__ import annotations

import errno
from contextlib import AbstractContextManager

from microkernel.ipc import Envelope
from microkernel.memory import PhysicalMemory
from microkernel.server import handles
from servers.vfs import core
from servers.vfs.abi import PAGE_SIZE
from servers.vfs.core import CentralFile, Window
from servers.vfs.paging import Pager
from servers.vfs.protocol import Data, Read, Write, Written
from servers.vfs.writeback import Flusher


class LegacyMixin:
    """``Read``/``Write``; mixed into :class:`servers.vfs.server.VfsServer`."""

    memory: PhysicalMemory
    pager: Pager
    flusher: Flusher

    def _window(self, env: Envelope, handle: int) -> Window:
        raise NotImplementedError

    def _writable_window(self, env: Envelope, handle: int) -> Window:
        raise NotImplementedError

    def _op(self, window: Window) -> AbstractContextManager[Window]:
        raise NotImplementedError

    @handles(Read)
    async def on_read(self, env: Envelope, msg: Read) -> Data:
        core.check_range(msg.position, msg.size)
        with self._op(self._window(env, msg.handle)) as window:
            cfile = window.file
            end = min(msg.position + msg.size, cfile.size)
            if msg.position >= end:
                return Data(b"")
            out = bytearray(end - msg.position)
            for pages in _chunks(msg.position, end):  # bounded requests: any size, any cache
                await self.pager.ensure_pages(cfile, pages, window)
                for p in pages:
                    lo, hi = max(p * PAGE_SIZE, msg.position), min((p + 1) * PAGE_SIZE, end)
                    self.memory.copy(
                        memoryview(out)[lo - msg.position : hi - msg.position],
                        self.memory.view(_frame(cfile, p) + lo - p * PAGE_SIZE, hi - lo),
                        reason="legacy-read",
                    )
            return Data(bytes(out))

    @handles(Write)
    async def on_write(self, env: Envelope, msg: Write) -> Written:
        core.check_range(msg.position, len(msg.data))
        with self._op(self._writable_window(env, msg.handle)) as window:
            cfile = window.file
            end = msg.position + len(msg.data)
            if end > cfile.size:
                await self.flusher.set_size(cfile, end, write_start=msg.position)
            src = memoryview(msg.data)
            for pages in _chunks(msg.position, end):
                await self.pager.ensure_pages(cfile, pages, window)
                for p in pages:
                    lo, hi = max(p * PAGE_SIZE, msg.position), min((p + 1) * PAGE_SIZE, end)
                    self.memory.copy(
                        self.memory.view(_frame(cfile, p) + lo - p * PAGE_SIZE, hi - lo),
                        src[lo - msg.position : hi - msg.position],
                        reason="legacy-write",
                    )
                core.mark_dirty(cfile, pages)  # before the next await: a give-back writes them
            return Written(len(msg.data))


def _frame(cfile: CentralFile, page: int) -> int:
    """The frame of a page the caller just brought in (no await since)."""
    phys = cfile.pages.phys_of(page)
    if phys < 0:
        raise OSError(errno.EAGAIN, f"{cfile.info.name}: page {page} went away")
    return phys


def _chunks(start: int, end: int) -> list[list[int]]:
    """The pages of file bytes start..end in runs no longer than a part (one cache request)."""
    pages = list(range(start // PAGE_SIZE, core.pages_of(end)))
    step = core.MAX_PART_PAGES
    return [pages[i : i + step] for i in range(0, len(pages), step)]
