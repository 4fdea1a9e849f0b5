"""Through the FUSE mount: what real programs do, on lookups relative to a directory (issue 9)."""

from __future__ import annotations

import sys
from pathlib import Path

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
