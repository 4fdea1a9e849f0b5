"""The shell commands, driven as a user would: the real CLI in a subprocess on dosfstools images.

Results are judged by the external oracles (``fsck.fat -n``, mtools), never by
the system under test alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.oracles import require_tool
from tests.tools.helpers import (
    ORACLES,
    assert_clean,
    cli,
    fat16,
    fat32,
    fetch,
    listing,
    mtool,
    ok,
    put,
)

COUNTERS = (
    "bytes_copied",
    "bytes_zero_copy",
    "messages_total",
    "messages_by_type",
    "syscalls",
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "disk_read_bytes",
    "disk_write_bytes",
    "partial_sector_writes",
    "dma_bounce_bytes",
    "frames_free",
)
ODD_NAME = "Größe — ein langer Dateiname.txt"


@pytest.fixture(autouse=True)
def _oracles() -> None:
    require_tool(*ORACLES)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes (None for a directory) of a host tree."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        out[path.relative_to(root).as_posix()] = None if path.is_dir() else path.read_bytes()
    return out


def test_cp_in_and_out_is_byte_identical_and_zero_copy(tmp_path: Path) -> None:
    """Host -> image -> host through the CLI; mtools and fsck agree; aligned means no copies."""
    image = fat32(tmp_path / "disk.img")
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "deep" / "random.bin").write_bytes(os.urandom(3 * 2**20 + 1234))
    (src / ODD_NAME).write_bytes("Inhalt: äöü\n".encode())
    stats = tmp_path / "in.json"
    ok("--stats", stats, "cp", "-r", src, f"{image}::/")
    ok("cp", "-r", f"{image}::/src", tmp_path / "out")

    assert _tree(tmp_path / "out") == _tree(src)
    assert_clean(image)
    assert {"/src/", "/src/deep/", f"/src/{ODD_NAME}", "/src/deep/random.bin"} <= listing(image)
    assert fetch(image, "/src/deep/random.bin") == (src / "deep" / "random.bin").read_bytes()
    counters = json.loads(stats.read_bytes())
    assert set(COUNTERS) <= set(counters)
    assert counters["syscalls"] > 0 and counters["messages_total"] > 0
    assert counters["bytes_copied"] == 0, counters.get("copies_by_reason")
    assert counters["partial_sector_writes"] == 0


def test_cp_single_files_and_between_images(tmp_path: Path) -> None:
    """A file onto a new name, into a directory, and from one image to another (two boots)."""
    one, two = fat16(tmp_path / "one.img"), fat16(tmp_path / "two.img")
    data = os.urandom(300_000)
    (tmp_path / "f.bin").write_bytes(data)
    mtool("mmd", "-i", two, "::/dir")
    ok("cp", tmp_path / "f.bin", f"{one}::/renamed.bin")
    ok("cp", f"{one}::/renamed.bin", f"{two}::/dir")

    assert fetch(two, "/dir/renamed.bin") == data
    for image in (one, two):
        assert_clean(image)


def test_cp_of_a_directory_needs_r(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    mtool("mmd", "-i", image, "::/d")
    done = cli("cp", f"{image}::/d", tmp_path / "d")
    assert done.returncode == 1
    assert f"{image}::/d" in done.stderr.decode()
    assert not (tmp_path / "d").exists()


def test_cat_prints_bytes_and_names_a_missing_file(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 40)
    put(image, tmp_path / "a.txt")
    put(image, tmp_path / "b.bin")

    done = cli("cat", f"{image}::/a.txt", f"{image}::/nope", f"{image}::/b.bin")
    assert done.returncode == 1
    assert done.stdout == b"alpha\n" + bytes(range(256)) * 40
    assert done.stderr.decode().strip() == (
        f"microkernel cat: {image}::/nope: No such file or directory"
    )


def test_ls_long_stat_and_hidden_entries(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    (tmp_path / "visible.txt").write_bytes(b"x" * 1234)
    (tmp_path / "secret.txt").write_bytes(b"s")
    put(image, tmp_path / "visible.txt")
    put(image, tmp_path / "secret.txt")
    mtool("mmd", "-i", image, "::/sub")
    mtool("mattrib", "-i", image, "+h", "::/secret.txt")

    long = ok("ls", "-l", f"{image}::/").stdout.decode()
    rows = {line.split()[-1]: line.split() for line in long.splitlines()}
    assert set(rows) == {"visible.txt", "sub"}
    assert "1234" in rows["visible.txt"] and rows["sub"][0].startswith("d")
    everything = ok("ls", "-a", f"{image}::").stdout.decode().split()
    assert sorted(everything) == ["secret.txt", "sub", "visible.txt"]
    status = ok("stat", f"{image}::/visible.txt").stdout.decode()
    assert f"{image}::/visible.txt" in status and "1234" in status and "regular file" in status


def test_mkdir_rmdir_mv_rm(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    (tmp_path / "f.txt").write_bytes(b"content\n")
    put(image, tmp_path / "f.txt")
    ok("mkdir", "-p", f"{image}::/a/b/c", f"{image}::/keep")
    ok("mv", f"{image}::/f.txt", f"{image}::/a/b")
    refused = cli("rmdir", f"{image}::/a")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (
        f"microkernel rmdir: {image}::/a: Directory not empty"
    )
    assert {"/a/", "/a/b/", "/a/b/c/", "/a/b/f.txt", "/keep/"} <= listing(image)
    assert fetch(image, "/a/b/f.txt") == b"content\n"

    ok("rm", "-r", f"{image}::/a")
    ok("rmdir", f"{image}::/keep")
    assert listing(image) == set()
    assert_clean(image)


def test_rm_without_r_and_missing_operands(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    mtool("mmd", "-i", image, "::/d")
    done = cli("rm", f"{image}::/d", f"{image}::/missing")
    assert done.returncode == 1
    errors = done.stderr.decode()
    assert f"{image}::/d: Is a directory" in errors
    assert f"{image}::/missing: No such file or directory" in errors
    assert cli("rm", "-f", f"{image}::/missing").returncode == 0
    assert listing(image) == {"/d/"}


@pytest.mark.parametrize(
    "argv",
    [
        ("cat", "plain-host-path"),
        ("cp", "a-host-file", "another-host-file"),
        ("mv", "x.img::/a", "y.img::/b"),
    ],
)
def test_usage_errors_exit_2(argv: tuple[str, ...]) -> None:
    done = cli(*argv)
    assert done.returncode == 2
    assert done.stderr.decode().startswith(f"microkernel {argv[0]}: ")


def test_a_missing_image_is_named(tmp_path: Path) -> None:
    done = cli("ls", f"{tmp_path}/absent.img::/")
    assert done.returncode == 1
    assert done.stderr.decode().startswith(
        f"microkernel ls: {tmp_path}/absent.img: No such file or directory"
    )
