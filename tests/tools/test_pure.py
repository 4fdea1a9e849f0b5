"""The pure parts of the tools: ``IMAGE::/path`` parsing and the FUSE inode table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    root, a, b = 1, 10, 11  # inodes are the kernel's nodes
    table.known(root, "Dir", a)
    table.known(a, "file.txt", b)
    assert table.where(b) == (a, "file.txt") and table.parent(a) == root
    table.moved(root, "DIR", root, "moved")  # case-insensitive, the subtree follows
    assert table.where(a) == (root, "moved") and table.where(b) == (a, "file.txt")
    table.removed(root, "moved")
    with pytest.raises(OSError):
        table.where(a)


def test_inode_table_counts_lookups_until_forget() -> None:
    fuse = pytest.importorskip("clients.fuse")
    table = fuse.InodeTable()
    table.known(1, "f", 10)
    table.looked_up(10)
    table.looked_up(10)
    table.looked_up(1)  # the root is never counted, never forgotten
    assert len(table) == 1
    assert not table.forget(10, 1) and table.referenced(10)
    assert table.forget(10, 1) and not table.referenced(10) and len(table) == 0
    with pytest.raises(OSError):
        table.where(10)
    assert not table.forget(1, 5)


segments = st.text(alphabet="ab.*/", min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(image=st.sampled_from(["d.img", "dir/d.img", "a::b.img"]), path=segments)
def test_parse_is_a_normal_form(image: str, path: str) -> None:
    """Parsing what was printed gives the same location; the path is absolute and clean."""
    loc = parse(f"{image}::{path}")
    assert loc is not None and loc.image == image
    assert loc.path.startswith("/") and "//" not in loc.path and "/./" not in loc.path + "/"
    assert loc.path == "/" or not loc.path.endswith("/")
    assert parse(str(loc)) == loc
    assert loc.trailing_slash == (path.endswith("/") and loc.path != "/")
