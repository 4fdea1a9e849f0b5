"""One central file per file: identity comes from the file system, not from the path (issue 9)."""

from __future__ import annotations

import pytest

import microkernel
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype, run

pytestmark = pytest.mark.anyio

ORIGINAL = b"0123456789abcdef" * 100


@pytest.mark.parametrize("alias", ["/LONGFI~1.TXT", "/LongFileName.TXT"])
async def test_alias_reaches_the_same_central_file(make_image: ImageFactory, alias: str) -> None:
    """Append + fsync through one name, a write through the other: nothing fsynced is lost."""
    image = make_image({"/longfilename.txt": ORIGINAL})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        a = await proc.open("/longfilename.txt", "r+b")
        b = await proc.open(alias, "r+b")
        a.seek(0, 2)
        await a.write(b"x" * 50_000)
        await a.fsync()
        assert b.size == len(ORIGINAL) + 50_000  # one state page: b sees a's size at once
        await b.write(b"ten bytes!")
        await b.close()
        await a.close()
    fsck_ok(image)
    assert mtype(image, "/longfilename.txt") == b"ten bytes!" + ORIGINAL[10:] + b"x" * 50_000


async def test_new_file_at_a_renamed_parents_old_path_is_a_new_file(
    make_image: ImageFactory,
) -> None:
    image = make_image({"/d/f": ORIGINAL})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        old = await proc.open("/d/f", "r+b")
        await proc.rename("/d", "/e")
        await proc.mkdir("/d")
        await proc.write_file("/d/f", b"new bytes")
        assert await proc.read_file("/d/f") == b"new bytes"
        assert old.size == len(ORIGINAL)
        assert await old.read() == ORIGINAL
        await old.close()
    fsck_ok(image)
    assert mtype(image, "/d/f") == b"new bytes"
    assert mtype(image, "/e/f") == ORIGINAL


async def test_rename_over_an_open_file(make_image: ImageFactory) -> None:
    """The replaced file stays readable through its handle; the name now means the other file."""
    image = make_image({"/a": b"A" * 9000, "/b": b"B" * 7000})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        held = await proc.open("/b", "r+b")
        await proc.rename("/a", "/b")
        assert await proc.read_file("/b") == b"A" * 9000
        assert await held.read() == b"B" * 7000
        held.seek(0, 2)
        await held.write(b"more")  # writes to the replaced file go nowhere visible
        await held.close()
        assert await proc.read_file("/b") == b"A" * 9000
        assert sorted(await proc.listdir("/")) == ["b"]
    fsck_ok(image)
    assert mtype(image, "/b") == b"A" * 9000


async def test_unlinked_open_file_lives_until_last_close(make_image: ImageFactory) -> None:
    image = make_image({"/keep": b"k"})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        free_before = (await proc.statfs()).free_clusters
        f = await proc.open("/tmpfile", "w+b")
        await f.write(b"t" * 100_000)
        await proc.unlink("/tmpfile")
        assert not await proc.exists("/tmpfile")
        other = await proc.open("/tmpfile", "w+b")  # a new file at the old name
        await other.write(b"new")
        await f.write(b"u" * 50_000)  # still writable
        f.seek(0)
        assert await f.read() == b"t" * 100_000 + b"u" * 50_000
        await other.close()
        await f.close()
        await proc.unlink("/tmpfile")
        assert (await proc.statfs()).free_clusters == free_before
    fsck_ok(image)
    assert "tmpfile" not in run("mdir", "-b", "-i", image, "::/")


async def test_temporary_file_sequence(make_image: ImageFactory) -> None:
    """What ``tempfile.TemporaryFile`` does: create, unlink at once, write, seek, read."""
    image = make_image({})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        f = await proc.open("/tmpXYZ", "x+b")
        await proc.unlink("/tmpXYZ")
        for k in range(20):
            await f.write(bytes([k]) * 5000)
        assert f.seek(0) == 0
        assert await f.read(5000) == bytes(5000)
        f.seek(-5000, 2)
        assert await f.read() == bytes([19]) * 5000
        await f.close()
    fsck_ok(image)


async def test_last_close_of_an_unlinked_file_leaves_the_new_file_at_its_place_alone(
    make_image: ImageFactory,
) -> None:
    """The new file takes the unlinked one's directory slot; closing the old one must not
    forget the new one's node, or unlinking the new one frees clusters it still uses
    (found by the state machine)."""
    image = make_image({})
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("p")
        old = await proc.open("/x.bin", "w+b")
        await old.write(b"o" * 10_000)
        await proc.unlink("/x.bin")
        new = await proc.open("/x.bin", "w+b")
        await new.write(b"n" * 50_000)
        await new.fsync()
        await old.close()
        await proc.unlink("/x.bin")  # open: its clusters must stay until its last close
        await proc.write_file("/y.bin", b"y" * 200_000)  # would reuse freed clusters
        new.seek(0)
        assert await new.read() == b"n" * 50_000
        await new.close()
        assert await proc.read_file("/y.bin") == b"y" * 200_000
    fsck_ok(image)
    assert mtype(image, "/y.bin") == b"y" * 200_000
