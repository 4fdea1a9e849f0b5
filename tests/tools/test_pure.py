"""The pure parts of the tools: ``IMAGE::/path`` parsing and the FUSE inode table."""

from __future__ import annotations

import pytest

from clients.imagepath import ImagePath, parse


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("disk.img::/a/b", ImagePath("disk.img", "/a/b")),
        ("disk.img::", ImagePath("disk.img", "/")),
        ("disk.img::a//b/./c/", ImagePath("disk.img", "/a/b/c")),
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
    root, a, b = 1, 10, 11  # inodes are the kernel's nodes
    table.known(root, "Dir", a)
    table.known(a, "file.txt", b)
    assert table.path(b) == "/Dir/file.txt"
    assert table.child(a, b"..") == "/" and table.child(a, b".") == "/Dir"
    table.moved(root, "DIR", root, "moved")  # case-insensitive, the subtree follows
    assert table.path(a) == "/moved" and table.path(b) == "/moved/file.txt"
    table.removed(root, "moved")
    with pytest.raises(OSError):
        table.path(b)
