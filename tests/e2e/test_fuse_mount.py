"""Through the FUSE mount: what real programs do, on lookups relative to a directory (issue 9)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.tools.helpers import assert_clean, fat16, fetch, listing
from tests.tools.test_fuse import _fuse, _unmount, mounted, sh  # noqa: F401  (fixture)

TEMPFILE_SCRIPT = """
import sys, tempfile, zipfile
with tempfile.TemporaryFile(dir=sys.argv[1]) as f:   # created, then unlinked at once
    f.write(b"x" * 100_000 + b"end")
    f.seek(0)
    assert f.read(5) == b"xxxxx"
    f.seek(-3, 2)
    assert f.read() == b"end", "seek from the end"
    f.seek(0)
    f.truncate()
    with zipfile.ZipFile(f, "w") as z:                 # what zipfile does with a temp file
        z.writestr("inner.txt", b"zipped" * 1000)
    f.seek(0)
    with zipfile.ZipFile(f) as z:
        assert z.read("inner.txt") == b"zipped" * 1000
print("ok")
"""


def test_temporary_file_and_a_deep_path_through_the_mount(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    mnt, stats = tmp_path / "mnt", tmp_path / "stats.json"
    deep = "/".join(f"d{i}" for i in range(40))
    with mounted(image, mnt, stats) as proc:
        assert sh(sys.executable, "-c", TEMPFILE_SCRIPT, mnt).strip() == b"ok"
        sh("mkdir", "-p", mnt / deep)
        (mnt / deep / "leaf.txt").write_bytes(b"deep down\n")
        assert sh("cat", mnt / deep / "leaf.txt") == b"deep down\n"
        sh("mv", mnt / "d0", mnt / "moved")
        moved = deep.replace("d0", "moved", 1)
        assert (mnt / moved / "leaf.txt").read_bytes() == b"deep down\n"
        _unmount(proc, mnt)
    assert_clean(image)
    assert f"/{moved}/leaf.txt" in listing(image)
    assert fetch(image, f"/{moved}/leaf.txt") == b"deep down\n"
    assert not any("tmp" in name for name in listing(image))


DEPTH = 100


def test_a_100_level_tree_changed_at_top_and_bottom_by_directory_node(tmp_path: Path) -> None:
    """mkdir 100 levels deep, rename the top, unlink/rmdir/rename at the bottom: every change
    goes to the kernel file driver relative to a directory node (``MkdirAt``, ``RenameAt``,
    ``UnlinkAt``, ``RmdirAt``), never by path; mtools and fsck.fat judge the result."""
    image = fat16(tmp_path / "disk.img")
    mnt, stats = tmp_path / "mnt", tmp_path / "stats.json"
    levels = [f"d{i}" for i in range(DEPTH)]
    with mounted(image, mnt, stats) as proc:
        sh("mkdir", "-p", mnt.joinpath(*levels))
        bottom = mnt.joinpath(*levels)
        (bottom / "gone.txt").write_bytes(b"unlinked at the bottom\n")
        (bottom.parent / "kept.txt").write_bytes(b"renamed at the bottom\n")
        (bottom / "sub").mkdir()
        os.rename(mnt / "d0", mnt / "top")  # the whole tree moves with one entry
        moved = mnt.joinpath("top", *levels[1:])
        assert (moved / "gone.txt").read_bytes() == b"unlinked at the bottom\n"
        os.unlink(moved / "gone.txt")
        os.rmdir(moved / "sub")
        os.rename(moved.parent / "kept.txt", moved / "KEPT.TXT")  # down one level, new case
        os.rename(moved, mnt / "shallow")  # 99 levels up in one rename
        with pytest.raises(FileNotFoundError):
            os.stat(moved)
        assert (mnt / "shallow" / "KEPT.TXT").read_bytes() == b"renamed at the bottom\n"
        os.rmdir(moved.parent)  # now empty: d98 goes
        _unmount(proc, mnt)
    assert_clean(image)
    names = listing(image)
    top = "/top/" + "/".join(levels[1:-2]) + "/"
    assert top in names and top + levels[-2] + "/" not in names
    assert "/shallow/" in names and "/shallow/KEPT.TXT" in names
    assert fetch(image, "/shallow/KEPT.TXT") == b"renamed at the bottom\n"
    assert not any(name.endswith(("gone.txt", "/sub/", "kept.txt")) for name in names)
    assert sum(name.endswith("/") for name in names) == DEPTH - 2 + 1  # d0..d97 and shallow
    calls = json.loads(stats.read_bytes())["syscalls_by_type"]
    assert calls["MkdirAt"] >= DEPTH + 1 and calls["RenameAt"] == 3
    assert calls["UnlinkAt"] == 1 and calls["RmdirAt"] == 2
    assert not {"Mkdir", "Rmdir", "Unlink", "Rename"} & set(calls), calls  # no path
