"""Issue 13, item by item: what a new user hit in the first hour, run as the user typed it.

Each test runs the real command in a subprocess (``python -m microkernel``
with this checkout on ``PYTHONPATH``) and judges the image with the external
oracles (mtools, ``fsck.fat -n``), never with the system under test alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.oracles import require_tool, run_tool
from tests.tools.helpers import (
    ORACLES,
    assert_clean,
    cli,
    env,
    error,
    fat16,
    fetch,
    listing,
    mtool,
    ok,
    put,
)


@pytest.fixture(autouse=True)
def _oracles() -> None:
    require_tool(*ORACLES)


def fat12(path: Path, kib: int = 4096, *options: str) -> Path:
    """A small FAT12 image (4 MiB by default): easy to fill."""
    done = run_tool("mkfs.fat", "-C", "-F", "12", *options, os.fspath(path), str(kib))
    assert done.returncode == 0, done.stderr
    return path


# ------------------------------------------------------------------ item 2: ramdisk
def test_ramdisk_writes_reach_the_image_or_say_they_do_not(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 2**20 + 77))
    ok("--driver", "ramdisk", "cp", big, f"{image}::/b.bin")
    ok("--driver", "ramdisk", "mkdir", f"{image}::/dir")
    assert fetch(image, "/b.bin") == big.read_bytes()
    assert "/dir/" in listing(image)
    assert_clean(image)

    discarded = cli(
        "--driver", "ramdisk", "--driver-option", "write_back=false", "mkdir", f"{image}::/gone"
    )
    assert discarded.returncode == 0
    assert "discarded" in discarded.stderr.decode()  # never silent
    assert "/gone/" not in listing(image)


# --------------------------------------------------------- item 3: names FAT refuses
def test_cp_r_reports_each_bad_name_in_one_line_and_copies_the_rest(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    tree = tmp_path / "weird"
    tree.mkdir()
    (tree / "a:b.txt").write_bytes(b"colon")
    (tree / os.fsdecode(b"\xff.txt")).write_bytes(b"latin-1")
    (tree / "ok.txt").write_bytes(b"fine")

    done = cli("cp", "-r", tree, f"{image}::/weird")
    assert done.returncode == 1
    lines = error(done).splitlines()
    assert len(lines) == 2, lines
    assert any("a:b.txt" in line and "':'" in line for line in lines), lines
    assert any("\\xff.txt" in line and "not valid UTF-8" in line for line in lines), lines
    assert fetch(image, "/weird/ok.txt") == b"fine"
    assert_clean(image)


# ---------------------------------------------- item 4: an image the user may only read
def _without_override(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    """The command as root *without* the capabilities that let root ignore file modes.

    Dropping CAP_DAC_OVERRIDE (and friends) from the bounding set makes the
    kernel check a 0444 file's mode for root too: an ``O_RDWR`` open fails
    with EACCES exactly as it would for an ordinary user.
    """
    argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    argv += [sys.executable, "-m", "microkernel", "--memory", "64M", *(os.fspath(a) for a in args)]
    return subprocess.run(argv, capture_output=True, env=env(), timeout=60, check=False)


def test_reading_commands_work_on_an_image_the_user_may_only_read(tmp_path: Path) -> None:
    image = fat16(tmp_path / "ro.img")
    (tmp_path / "a.txt").write_bytes(b"read me\n")
    put(image, tmp_path / "a.txt")
    image.chmod(0o444)
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's override of file modes")
    probe = _without_override("--version")
    if probe.returncode != 0:
        pytest.skip(f"cannot drop capabilities here: {probe.stderr.decode(errors='replace')}")
    if os.geteuid() == 0:  # the premise: without the override root cannot open it to write
        check = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
        check += [sys.executable, "-c", f"import os; os.open({str(image)!r}, os.O_RDWR)"]
        assert subprocess.run(check, capture_output=True, check=False).returncode != 0

    listed = _without_override("ls", f"{image}::/")
    assert listed.stdout.split() == [b"a.txt"], error(listed)
    assert _without_override("cat", f"{image}::/a.txt").stdout == b"read me\n"
    assert _without_override("stat", f"{image}::/a.txt").returncode == 0
    assert _without_override("du", f"{image}::/").returncode == 0
    copied = _without_override("cp", f"{image}::/a.txt", tmp_path / "out.txt")
    assert copied.returncode == 0, error(copied)
    assert (tmp_path / "out.txt").read_bytes() == b"read me\n"
    refused = _without_override("mkdir", f"{image}::/x")
    assert refused.returncode == 1
    assert error(refused).strip() == f"microkernel mkdir: {image}: Permission denied"
    assert listing(image) == {"/a.txt"}


def test_config_read_only_and_the_read_only_flag_open_the_image_read_only(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    config = tmp_path / "ro.toml"
    config.write_text(
        f'memory = "64M"\n[[devices]]\nimage = "{image}"\nread_only = true\n', encoding="utf-8"
    )
    refused = cli("--config", config, "mkdir", f"{image}::/x")
    assert refused.returncode == 1
    assert "Read-only file system" in error(refused)
    flagged = cli("--read-only", "mkdir", f"{image}::/y")
    assert flagged.returncode == 1 and "Read-only file system" in error(flagged)
    assert listing(image) == set()


# ------------------------------------------------------- item 5: run on a small image
def test_run_on_a_small_image_says_so_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    image = fat12(tmp_path / "small.img")
    before = image.read_bytes()
    done = cli("run", "--image", image)
    assert done.returncode == 1
    text = error(done)
    assert len(text.splitlines()) == 1
    assert "needs 33 MiB free" in text and "4.0 MiB" in text
    assert image.read_bytes() == before


# ------------------------------------------------------ item 6: the operand at fault
def test_errors_name_the_operand_that_is_wrong(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"x")
    host_file = tmp_path / "hostname"
    host_file.write_bytes(b"h\n")
    mtool("mmd", "-i", image, "::/tree")
    put(image, host_file, "::/tree/")

    done = cli("cp", "-r", tree, f"{image}::/nodir/x")
    assert error(done).strip() == f"microkernel cp: {image}::/nodir/x: No such file or directory"
    done = cli("cp", host_file, f"{image}::/tree/hostname/x")
    assert error(done).strip() == f"microkernel cp: {image}::/tree/hostname/x: Not a directory"
    done = cli("--trace", "/nonexist/t.jsonl", "ls", f"{image}::/")
    assert error(done).strip() == "microkernel ls: /nonexist/t.jsonl: No such file or directory"
    assert done.returncode == 1


# ------------------------------------------------------ item 7: a trailing slash
def test_cp_onto_an_absent_directory_with_a_slash_is_refused(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    (tmp_path / "f").write_bytes(b"data")
    done = cli("cp", tmp_path / "f", f"{image}::/newdir/")
    assert done.returncode == 1
    assert error(done).strip() == f"microkernel cp: {image}::/newdir/: Not a directory"
    assert listing(image) == set()
    ok("mkdir", f"{image}::/newdir")
    ok("cp", tmp_path / "f", f"{image}::/newdir/")
    assert fetch(image, "/newdir/f") == b"data"


# ------------------------------------------------------ item 8: correlation ids
def test_trace_summary_lists_ids_and_corr_draws_one(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    trace = tmp_path / "t.jsonl"
    ok("--trace", trace, "mkdir", f"{image}::/a")
    summary = ok("trace", trace, "--format", "summary").stdout.decode()
    row = next(line for line in summary.splitlines() if "Mkdir" in line)
    corr = re.findall(r"\d+", row)[-1]
    drawn = ok("trace", trace, "--format", "mermaid", "--corr", corr).stdout.decode()
    assert f"%% corr {corr}" in drawn and "Mkdir" in drawn
    by_name = ok("trace", trace, "--format", "mermaid", "--corr", "mkdir").stdout.decode()
    assert by_name == drawn
    missing = cli("trace", trace, "--format", "mermaid", "--corr", "999999")
    assert missing.returncode == 1
    assert "e.g. " in error(missing) and f"{corr} (Mkdir)" in error(missing)


def test_trace_of_a_file_that_is_no_trace_fails(tmp_path: Path) -> None:
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    done = cli("trace", text, "--format", "summary")
    assert done.returncode == 1
    assert "not a microkernel trace" in error(done)


# ------------------------------------------------------ item 9: a full disk
def test_a_file_too_big_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    image = fat12(tmp_path / "small.img")
    (tmp_path / "big.bin").write_bytes(os.urandom(5 * 2**20))
    done = cli("cp", tmp_path / "big.bin", f"{image}::/big.bin")
    assert done.returncode == 1
    text = error(done)
    assert "No space left on device" in text and "4.0M free" in text and "5.0M" in text
    assert listing(image) == set()
    assert_clean(image)


def test_a_disk_that_fills_during_the_copy_loses_the_partial_file(tmp_path: Path) -> None:
    """The data fits the free clusters, but the directory must grow first: ENOSPC mid-copy."""
    image = fat12(tmp_path / "small.img", 1024, "-s", "1")  # 512-byte clusters
    names = tmp_path / "names"
    names.mkdir()
    for i in range(14):  # a 512-byte directory cluster holds 16 entries: ., .. and 14 names
        (names / f"F{i:02d}").write_bytes(b"")
    mtool("mcopy", "-s", "-i", image, names, "::/d")
    free = int(ok("df", image).stdout.decode().splitlines()[1].split()[4]) * 1024
    data = os.urandom(free)  # exactly the free space: no room for the directory's new cluster
    (tmp_path / "exact.bin").write_bytes(data)
    done = cli("cp", tmp_path / "exact.bin", f"{image}::/d/exact.bin")
    assert done.returncode == 1
    text = error(done)
    assert "No space left on device" in text and "partial file was removed" in text
    assert "/d/exact.bin" not in listing(image)
    assert_clean(image)


# ------------------------------------------------------ item 10: partitioned images
def test_a_partitioned_image_names_the_partition_to_pass(tmp_path: Path) -> None:
    image = tmp_path / "part.img"
    ok("mkfs", image, "--size", "8M", "--partition-start", "2048")
    (tmp_path / "h.txt").write_bytes(b"hello\n")
    done = cli("cp", tmp_path / "h.txt", f"{image}::/h.txt")
    assert done.returncode == 1
    assert "pass --partition 1" in error(done)
    ok("--partition", "1", "cp", tmp_path / "h.txt", f"{image}::/h.txt")
    assert ok("--partition", "1", "cat", f"{image}::/h.txt").stdout == b"hello\n"


# ------------------------------------------------------ item 11: mount point
def test_mount_on_a_missing_directory_says_so(tmp_path: Path) -> None:
    pytest.importorskip("pyfuse3")
    image = fat16(tmp_path / "d.img")
    done = cli("mount", image, tmp_path / "no" / "such")
    assert done.returncode == 1
    assert error(done).strip().endswith("no/such: No such file or directory")


# ------------------------------------------------------ item 12: mkfs over a file
def test_mkfs_refuses_a_non_empty_file_without_force(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    done = cli("mkfs", victim, "--size", "8M")
    assert done.returncode == 1
    assert "--force" in error(done)
    assert victim.read_bytes() == b"precious\n"
    ok("mkfs", victim, "--size", "8M", "--force")
    assert_clean(victim)


# ------------------------------------------------------ item 13: --version
def test_version() -> None:
    done = ok("--version")
    assert re.fullmatch(rb"microkernel \d+\.\d+\S*\n", done.stdout), done.stdout


# ------------------------------------------------------ item 14: modification times
def test_cp_p_keeps_modification_times_both_ways(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    src = tmp_path / "old.txt"
    src.write_bytes(b"old\n")
    when = 981173106  # 2001-02-03 04:05:06 UTC; FAT keeps even seconds in local time
    os.utime(src, (when, when))
    ok("cp", "-p", src, f"{image}::/old.txt")
    shown = mtool("mdir", "-i", image, "::/old.txt").decode()
    assert "2001-02-0" in shown, shown
    ok("cp", "-p", f"{image}::/old.txt", tmp_path / "back.txt")
    assert abs(os.stat(tmp_path / "back.txt").st_mtime - when) <= 2
    ok("cp", src, f"{image}::/new.txt")  # without -p: the time of the copy
    assert "2001" not in mtool("mdir", "-i", image, "::/new.txt").decode()


# ------------------------------------------------------ item 15: dangling symlinks
def test_a_dangling_symlink_or_a_link_loop_is_named_as_such(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "real.txt").write_bytes(b"r")
    (tree / "dangling").symlink_to(tmp_path / "nowhere")
    (tree / "sub").mkdir()
    (tree / "sub" / "up").symlink_to("..")  # a loop: followed, it would never end
    done = cli("cp", "-r", tree, f"{image}::/")
    assert done.returncode == 1
    lines = error(done).splitlines()
    assert len(lines) == 2, lines
    assert "tree/dangling: dangling symbolic link" in lines[0]
    assert "tree/sub/up: a directory containing itself" in lines[1]
    assert fetch(image, "/tree/real.txt") == b"r"
    assert listing(image) == {"/tree/", "/tree/real.txt", "/tree/sub/"}


# ------------------------------------------------------ item 16: commands users expect
def test_ls_several_paths_recursive_and_wildcards(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")
    ok("mkdir", "-p", f"{image}::/a/deep", f"{image}::/b")
    for name in ("one.txt", "two.txt", "three.bin"):
        (tmp_path / name).write_bytes(name.encode())
    ok("cp", tmp_path / "one.txt", tmp_path / "two.txt", tmp_path / "three.bin", f"{image}::/a")
    both = ok("ls", f"{image}::/a", f"{image}::/b").stdout.decode()
    assert f"{image}::/a:" in both and f"{image}::/b:" in both and "one.txt" in both
    recursive = ok("ls", "-R", f"{image}::/").stdout.decode()
    assert f"{image}::/a/deep:" in recursive
    matched = ok("ls", f"{image}::/a/*.TXT").stdout.decode().split()
    assert matched == ["one.txt", "two.txt"]
    assert ok("cat", f"{image}::/a/t*").stdout == b"three.bintwo.txt"
    none = cli("ls", f"{image}::/a/*.doc")
    assert none.returncode == 1 and "no file matches" in error(none)
    assert cli("rm", "-f", f"{image}::/a/*.doc").returncode == 0  # -f: no match is no error
    ok("rm", f"{image}::/a/*.txt")
    assert listing(image) == {"/a/", "/a/deep/", "/a/three.bin", "/b/"}


def test_cp_several_sources_into_a_directory_and_out(tmp_path: Path) -> None:
    image, other = fat16(tmp_path / "d.img"), fat16(tmp_path / "e.img")
    for name in ("x.txt", "y.txt"):
        (tmp_path / name).write_bytes(name.encode())
    ok("mkdir", f"{image}::/in")
    ok("cp", tmp_path / "x.txt", tmp_path / "y.txt", f"{image}::/in")
    out = tmp_path / "out"
    out.mkdir()
    ok("cp", f"{image}::/in/*", out)
    assert sorted(p.name for p in out.iterdir()) == ["x.txt", "y.txt"]
    ok("cp", f"{image}::/in/x.txt", f"{image}::/in/y.txt", f"{other}::/")
    assert fetch(other, "/y.txt") == b"y.txt"
    refused = cli("cp", tmp_path / "x.txt", tmp_path / "y.txt", f"{image}::/in/x.txt")
    assert refused.returncode == 1 and "not a directory" in error(refused)
    assert_clean(image)
    assert_clean(other)


def test_du_and_df(tmp_path: Path) -> None:
    image = fat16(tmp_path / "d.img")  # 2 KiB clusters
    (tmp_path / "f.bin").write_bytes(b"z" * 5000)  # three clusters: 6 KiB
    ok("mkdir", f"{image}::/d")
    ok("cp", tmp_path / "f.bin", f"{image}::/d/f.bin")
    du = ok("du", "-a", f"{image}::/d").stdout.decode().splitlines()
    assert f"6\t{image}::/d/f.bin" in du
    assert du[-1].endswith(f"\t{image}::/d") and int(du[-1].split()[0]) >= 6
    assert ok("du", "-s", "-h", f"{image}::/").stdout.decode().split()[0].endswith("K")

    header, row = ok("df", "--driver", "ahci", image).stdout.decode().splitlines()  # global after
    assert header.split() == [
        "Image",
        "Type",
        "1K-blocks",
        "Used",
        "Free",
        "Use%",
        "Cluster",
        "Label",
    ]
    cells = row.split()
    assert cells[:2] == [str(image), "FAT16"] and cells[6] == "2048" and cells[7] == "NO"
    assert int(cells[2]) == int(cells[3]) + int(cells[4])
    free = re.search(rb"([\d ]+) bytes free", mtool("mdir", "-i", image, "::/"))
    assert free is not None
    assert int(cells[4]) * 1024 == int(free.group(1).replace(b" ", b""))


def test_help_texts_and_global_options_once() -> None:
    """Every flag of every command has a help text; global options are described once."""
    from microkernel.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                assert action.help, (name, action.option_strings)
    top = ok("--help").stdout.decode()
    assert "--driver" in top and "--read-only" in top and "--version" in top
    for command in ("ls", "cp", "rm", "du", "df", "run", "mkfs", "mount", "trace"):
        text = ok(command, "--help").stdout.decode()
        assert "--driver" not in text and "--memory" not in text, command
        assert "global options" in text  # the epilog points at them instead
    cp_help = ok("cp", "--help").stdout.decode()
    assert "copy directories recursively" in cp_help and "keep modification times" in cp_help
    assert "ignore missing operands" in ok("rm", "--help").stdout.decode()
    # and they still work after the command
    assert ok("--version").returncode == 0


def test_run_keep_keeps_the_demo_image_it_names(tmp_path: Path) -> None:
    done = ok("run", "--keep")
    first = done.stdout.decode().splitlines()[0]
    match = re.search(r"in (/\S+/demo\.img)$", first)
    assert match is not None, first
    kept = Path(match.group(1))
    try:
        assert kept.exists()
        assert "/demo/stream.bin" in listing(kept)
        assert_clean(kept)
    finally:
        kept.unlink(missing_ok=True)
        kept.parent.rmdir()


def test_run_that_fails_midway_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """Room enough, but the volume refuses writes: the task group's failure becomes one line."""
    image = tmp_path / "d40.img"
    assert run_tool("mkfs.fat", "-C", "-F", "32", os.fspath(image), "40000").returncode == 0
    before = image.read_bytes()
    done = cli("--read-only", "run", "--image", image)
    assert done.returncode == 1
    text = error(done)
    assert len(text.splitlines()) == 1 and "Read-only file system" in text, text
    assert image.read_bytes() == before
