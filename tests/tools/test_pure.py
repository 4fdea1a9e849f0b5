"""The pure parts of the tools: ``IMAGE::/path`` parsing and the FUSE inode table."""

from __future__ import annotations

import pytest

from clients.imagepath import ImagePath, parse


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("disk.img::/a/b", ImagePath("disk.img", "/a/b")),
        ("disk.img::", ImagePath("disk.img", "/")),
        ("disk.img::a//b/./c/", ImagePath("disk.img", "/a/b/c", trailing_slash=True)),
        ("disk.img::/", ImagePath("disk.img", "/")),
        ("disk.img:://x/../y", ImagePath("disk.img", "/y")),
        ("dir::odd/disk.img::/f", ImagePath("dir::odd/disk.img", "/f")),
        ("plain/host/path", None),
        ("::/no-image", None),
    ],
)
def test_parse(arg: str, expected: ImagePath | None) -> None:
    assert parse(arg) == expected


def test_image_path_child_and_text() -> None:
    loc = ImagePath("d.img", "/").child("x").child("y.txt")
    assert str(loc) == "d.img::/x/y.txt"
    assert loc.name == "y.txt"


def test_inode_table_follows_renames_and_removals() -> None:
    fuse = pytest.importorskip("clients.fuse")
    table = fuse.InodeTable()
    root = 1
    a = table.inode(table.child(root, b"Dir"))
    b = table.inode("/Dir/file.txt")
    assert table.inode("/DIR/FILE.TXT") == b  # FAT names are case-insensitive
    assert table.child(a, b"..") == "/" and table.child(a, b".") == "/Dir"

    table.moved("/DIR", "/moved")
    assert table.path(a) == "/moved" and table.path(b).casefold() == "/moved/file.txt"
    assert table.inode("/moved/file.txt") == b

    table.removed("/moved")
    with pytest.raises(OSError):
        table.path(b)
    assert table.inode("/moved") not in (a, b)  # numbers are never reused
