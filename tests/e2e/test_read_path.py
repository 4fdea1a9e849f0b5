"""The file library's read hit path: the position in Python, the remembered part, one view.

A hit costs no system call and no FileMap search; the position reaches the
per-process page before every system call and on close; a part the kernel
removed is never read through the remembered hit; seek/tell behave like
``io.BytesIO`` over the same bytes, also while the kernel evicts parts.
"""

from __future__ import annotations

import io
import random
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microkernel
import microkernel.addrspace
from clients.file import SEEK_CUR, SEEK_END, SEEK_SET, File
from clients.process import UserProcess
from microkernel.boot import System
from servers.vfs.abi import DATA_OFFSET
from servers.vfs.core import Window
from servers.vfs.filemap import FileMapReader, Part
from servers.vfs.protocol import Close
from servers.vfs.server import VfsServer
from tests.e2e.conftest import ImageFactory

DATA = random.Random(77).randbytes(1 << 20)


def window_of(system: System, f: File) -> Window:
    vfs = system.server("vfs")
    assert isinstance(vfs, VfsServer)
    return vfs.windows[f.handle]


class CountingReader:
    """A FileMapReader that counts its searches (the hit path must not search)."""

    def __init__(self, inner: FileMapReader) -> None:
        self.inner = inner
        self.searches = 0

    def find(self, position: int) -> tuple[int, Part] | None:
        self.searches += 1
        return self.inner.find(position)

    def release(self) -> None:
        self.inner.release()


@pytest.mark.anyio
async def test_hits_make_no_search_and_no_system_call(make_image: ImageFactory) -> None:
    image = make_image({"/d.bin": DATA})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/d.bin", "rb") as f:
            assert await f.read(8) == DATA[:8]  # a miss: maps the first part
            counting = CountingReader(f._filemap)
            f._filemap = counting
            calls, messages = proc.syscalls, system.counters.messages_total
            for i in range(1, 4000):
                assert await f.read(8) == DATA[8 * i : 8 * i + 8]
            assert f.tell() == 4000 * 8
            assert (proc.syscalls, system.counters.messages_total) == (calls, messages)
            assert counting.searches == 0  # the remembered part answered every read


@pytest.mark.anyio
async def test_the_position_is_published_before_system_calls_and_on_close(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/d.bin": DATA})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        f = await proc.open("/d.bin", "rb")
        window = window_of(system, f)
        slot = f._slot
        await f.read(100)
        f.seek(5000)
        assert await f.read(10) == DATA[5000:5010]
        assert window.procpage.position(slot) != 5010  # hits and seeks stay in Python
        await f.stat()
        assert window.procpage.position(slot) == 5010  # a system call publishes first
        f.seek(-3, SEEK_CUR)
        seen: list[int] = []
        inner = proc.post  # a read-only handle's close is posted, not waited for

        async def spy(request: Any) -> None:
            if isinstance(request, Close):
                seen.append(window.procpage.position(slot))
            await inner(request)

        proc.post = spy
        await f.close()
        assert seen == [5007]


@pytest.mark.anyio
async def test_a_part_the_kernel_removed_is_not_read_through_the_remembered_hit(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/d.bin": DATA})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        vfs = system.server("vfs")
        assert isinstance(vfs, VfsServer)
        async with await proc.open("/d.bin", "rb") as f:
            f.seek(800_000)
            assert await f.read(10) == DATA[800_000:800_010]  # remembered: this part
            window = window_of(system, f)
            for _ in range(4):  # never touched again: second chance removes it
                vfs.pager.second_chance(window)
            assert not window.parts
            with anyio.fail_after(5):  # unmapped after two grace periods, entry cleared
                while window.space.is_mapped(DATA_OFFSET + 800_000, 1):
                    await anyio.sleep(0.01)
            calls = proc.syscalls
            assert await f.read(10) == DATA[800_010:800_020]
            assert proc.syscalls > calls  # a miss, not a read of the discarded pages


@pytest.mark.anyio
async def test_seek_and_tell_like_a_python_file(make_image: ImageFactory) -> None:
    image = make_image({"/d.bin": DATA[:10_000]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        f = await proc.open("/d.bin", "rb")
        assert f.seek(100) == 100 and f.tell() == 100
        assert f.seek(-10, SEEK_END) == 9_990
        assert await f.read(100) == DATA[9_990:10_000]
        assert await f.read(1) == b""
        assert f.seek(5, SEEK_END) == 10_005 and await f.read() == b""
        assert f.seek(-5, SEEK_CUR) == 10_000
        with pytest.raises(OSError, match="negative seek") as err:
            f.seek(-1)
        assert err.value.errno == 22
        with pytest.raises(ValueError, match="whence"):
            f.seek(0, 7)
        assert f.tell() == 10_000  # a refused seek moves nothing
        await f.close()
        with pytest.raises(ValueError, match="closed"):
            f.tell()
        with pytest.raises(ValueError, match="closed"):
            await f.read(1)
        with pytest.raises(ValueError, match="closed"):
            f.seek(0)


@pytest.mark.anyio
async def test_reads_without_map_fixed_take_per_read_views(
    make_image: ImageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stitched fallback has no window-wide view: reads slice per part instead."""
    monkeypatch.setattr(microkernel.addrspace, "_map_fixed_works", False)
    image = make_image({"/d.bin": DATA[:100_000]})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        async with await proc.open("/d.bin", "rb") as f:
            assert f._space.mode == "stitched" and f._data is None
            assert await f.read(8) == DATA[:8]
            assert await f.read(8) == DATA[8:16]
            f.seek(4090)  # one frame each side: a stitched view may not span them
            out = bytearray(20)
            assert await f.readinto(out) == 20 and bytes(out) == DATA[4090:4110]


# ------------------------------------------------------------------ against io.BytesIO
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("seek"), st.integers(-2000, 110_000), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("read"), st.integers(-1, 9000), st.just(0)),
        st.tuples(st.just("readinto"), st.integers(0, 9000), st.just(0)),
        st.tuples(st.just("evict"), st.just(0), st.just(0)),
    ),
    max_size=30,
)


async def _apply(system: System, proc: UserProcess, ops: list[tuple[str, int, int]]) -> None:
    vfs = system.server("vfs")
    assert isinstance(vfs, VfsServer)
    model = io.BytesIO(DATA[:100_000])
    async with await proc.open("/d.bin", "rb") as f:
        for op, n, whence in ops:
            if op == "seek":
                base = {SEEK_SET: 0, SEEK_CUR: model.tell(), SEEK_END: 100_000}[whence]
                if base + n < 0:
                    with pytest.raises(OSError):
                        f.seek(n, whence)
                else:
                    assert f.seek(n, whence) == model.seek(n, whence)
            elif op == "read":
                assert await f.read(n) == model.read(n)
            elif op == "readinto":
                got, want = bytearray(n), bytearray(n)
                assert await f.readinto(got) == model.readinto(want)
                assert got == want
            else:  # the kernel ages out every part the file did not touch since
                for _ in range(4):
                    vfs.pager.second_chance(window_of(system, f))
            assert f.tell() == model.tell()


def test_reads_and_seeks_match_bytesio_while_parts_come_and_go(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/d.bin": DATA[:100_000]})
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        microkernel.boot(image=image, memory="64M")
    ) as system:
        proc = portal.call(system.spawn, "p")

        @settings(
            max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        )
        @given(OPS)
        def check(ops: list[tuple[str, int, int]]) -> None:
            portal.call(_apply, system, proc, ops)

        check()
