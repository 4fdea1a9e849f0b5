"""A reader that remembers its last part re-validates it with two loads."""

from __future__ import annotations

from servers.vfs.filemap import FileMapReader
from servers.vfs.filemap_writer import FileMapWriter


def test_still_tracks_removal_clear_and_reuse() -> None:
    page = bytearray(4096)
    writer = FileMapWriter(page)
    reader = FileMapReader(memoryview(page))
    index = writer.insert(8192, 4096, 8192)
    hit = reader.find(9000)
    assert hit is not None and hit[0] == index
    assert reader.still(index, 8192, 4096)
    writer.remove(index)
    assert reader.find(9000) is None
    assert reader.still(index, 8192, 4096)  # unlinked, but readable until the grace ends
    writer.clear_part(index)
    assert not reader.still(index, 8192, 4096)
    again = writer.insert(0, 4096, 0)
    if again == index:
        assert not reader.still(index, 8192, 4096)
