"""File state page (seqlock) and per-process file page: layout, behaviour, errors."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servers.vfs import pages
from servers.vfs.pages import (
    FileState,
    FileStatePage,
    PageError,
    PartUsage,
    ProcessFilePage,
    StateUnstable,
    read_state,
    write_state,
)


def test_state_page_layout() -> None:
    """Fields sit at the documented offsets, little-endian; seq is even after a write."""
    page = bytearray(pages.PAGE_SIZE)
    state = FileState(
        size=5000, allocated=8192, attributes=0x20, mtime_ns=1_700_000_000 * 10**9, name="notes.txt"
    )
    write_state(page, state)
    assert struct.unpack_from("<IIqqqH", page, 0) == (2, 0x20, 5000, 8192, state.mtime_ns, 9)
    assert page[64:73] == b"notes.txt"
    assert struct.calcsize(pages.STATE_FIELDS_FORMAT) == 30
    write_state(page, state._replace(size=6000))
    assert struct.unpack_from("<I", page, 0) == (4,)
    assert read_state(bytes(page)) == state._replace(size=6000)


@given(
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=200),
)
def test_state_round_trips(
    size: int, allocated: int, attributes: int, mtime: int, name: str
) -> None:
    """Whatever the kernel writes, a reader gets back exactly."""
    page = bytearray(pages.PAGE_SIZE)
    write_state(
        page,
        FileState(size=1, allocated=2, attributes=3, mtime_ns=4, name="a much longer first name"),
    )
    state = FileState(size, allocated, attributes, mtime, name)
    write_state(page, state)
    assert read_state(page) == state
    view = FileStatePage(page)
    assert view.size == size
    assert view.seq == 4
    view.release()


def test_odd_sequence_never_stabilises() -> None:
    """A writer that died mid-update leaves seq odd: readers get a typed error, not a hang."""
    page = bytearray(pages.PAGE_SIZE)
    write_state(page, FileState(1, 1, 0, 0, "x"))
    struct.pack_into("<I", page, 0, 7)
    with pytest.raises(StateUnstable) as err:
        read_state(page, attempts=100)
    assert err.value.errno == errno.EAGAIN
    write_state(page, FileState(2, 2, 0, 0, "y"))  # the kernel's next write recovers it
    assert struct.unpack_from("<I", page, 0) == (8,)
    assert read_state(page).size == 2


def test_state_errors() -> None:
    """Too long a name, a read-only page for the kernel, a wrong-sized buffer."""
    page = bytearray(pages.PAGE_SIZE)
    with pytest.raises(PageError) as err:
        write_state(page, FileState(0, 0, 0, 0, "é" * 600))
    assert err.value.errno == errno.ENAMETOOLONG
    with pytest.raises(PageError) as err:
        write_state(bytes(page), FileState(0, 0, 0, 0, ""))
    assert err.value.errno == errno.EROFS
    with pytest.raises(PageError):
        read_state(bytearray(100))
    page[32:34] = b"\x02\x00"
    page[64:66] = b"\xff\xfe"
    with pytest.raises(PageError) as err:
        read_state(page)
    assert err.value.errno == errno.EUCLEAN


def test_process_page_layout() -> None:
    """Lock word at 0, positions at 64, touch counters at 576, dirty bytes at 1024."""
    raw = bytearray(pages.PAGE_SIZE)
    page = ProcessFilePage(raw)
    assert page.try_lock(77)
    page.set_position(3, 2**40 + 5)
    page.note_read(1)
    page.note_write(224)
    assert struct.unpack_from("<I", raw, 0) == (77,)
    assert struct.unpack_from("<q", raw, 64 + 3 * 8) == (2**40 + 5,)
    assert struct.unpack_from("<H", raw, 576) == (1,)
    assert struct.unpack_from("<H", raw, 576 + 2 * 223) == (2,)
    assert raw[1024 + 223] == 1 and raw[1024] == 0
    assert not any(raw[1248:])
    page.release()


def test_spinlock_word() -> None:
    """The lock is claimed once, released only by its owner."""
    page = ProcessFilePage(bytearray(pages.PAGE_SIZE))
    assert page.try_lock(5)
    assert not page.try_lock(6)
    with pytest.raises(PageError) as err:
        page.unlock(6)
    assert err.value.errno == errno.EPERM
    page.unlock(5)
    assert page.lock_owner == 0
    assert page.try_lock(6)
    with pytest.raises(PageError):
        page.try_lock(0)


def test_positions_and_counters() -> None:
    """Reads add 1, writes 2 and mark dirty; counters saturate; the kernel takes them."""
    page = ProcessFilePage(bytearray(pages.PAGE_SIZE))
    assert page.position(0) == 0
    page.set_position(63, 12345)
    assert page.position(63) == 12345
    for bad in (-1, 64):
        with pytest.raises(PageError) as err:
            page.position(bad)
        assert err.value.errno == errno.EBADF
    with pytest.raises(PageError):
        page.set_position(0, -1)
    for bad in (0, 225):
        with pytest.raises(PageError):
            page.note_read(bad)
    page.note_read(7)
    page.note_read(7)
    page.note_write(8)
    assert page.take_usage([7, 8, 9]) == {
        7: PartUsage(2, False),
        8: PartUsage(2, True),
        9: PartUsage(0, False),
    }
    assert page.touch(7) == 0 and page.is_dirty(8)  # dirty survives a scan
    assert page.take_dirty(8) and not page.take_dirty(8)
    for _ in range(40_000):
        page.note_write(9)
    assert page.touch(9) == pages.TOUCH_MAX
    page.reset_part(9)
    assert page.touch(9) == 0 and not page.is_dirty(9)
