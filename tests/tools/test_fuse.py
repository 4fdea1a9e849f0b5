"""``microkernel mount``: real shell tools on a FUSE mount of an image, judged by fsck and mtools.

The mount runs as a background subprocess, as a user would run it. Where FUSE
is unavailable (no ``/dev/fuse``, no ``fusermount3``, mounting not permitted)
the tests skip with the reason, and fail instead under
``MICROKERNEL_REQUIRE_ORACLES=1`` (CI runs as root with ``/dev/fuse``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from servers.vfs.protocol import Forget
from tests.oracles import require_tool
from tests.tools.helpers import (
    MEMORY,
    ORACLES,
    REPO,
    assert_clean,
    env,
    fat16,
    fetch,
    listing,
    put,
)

MOUNT_WAIT = 20.0  # seconds for the system to boot and the mount to appear
EXIT_WAIT = 30.0  # seconds for a clean shutdown after unmounting


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("MICROKERNEL_REQUIRE_ORACLES") == "1":
        pytest.fail(f"FUSE unavailable: {reason} (MICROKERNEL_REQUIRE_ORACLES=1)")
    pytest.skip(f"FUSE unavailable: {reason}")


@pytest.fixture(autouse=True)
def _fuse() -> None:
    require_fuse()


def require_fuse() -> None:
    """Skip (or fail under MICROKERNEL_REQUIRE_ORACLES=1) where FUSE cannot work."""
    require_tool(*ORACLES)
    if not os.path.exists("/dev/fuse"):
        _unavailable("no /dev/fuse")
    if shutil.which("fusermount3") is None:
        _unavailable("fusermount3 not installed")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        _unavailable("pyfuse3 not installed (pip install microkernel[fuse])")


def sh(*argv: str | os.PathLike[str]) -> bytes:
    """A shell tool on the mount; bounded, so a hung file system fails instead of hanging."""
    done = subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, (argv, done.stderr.decode(errors="replace"))
    return done.stdout


def _wait_mounted(proc: subprocess.Popen[bytes], mnt: Path, log: Path) -> None:
    deadline = time.monotonic() + MOUNT_WAIT
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            message = log.read_text(errors="replace")
            if "ermission" in message or "not permitted" in message or "fuse:" in message:
                _unavailable(f"mounting failed: {message.strip()}")
            pytest.fail(f"microkernel mount exited with {proc.returncode}: {message}")
        assert time.monotonic() < deadline, f"not mounted after {MOUNT_WAIT}s"
        time.sleep(0.05)


@contextmanager
def mounted(
    image: Path, mnt: Path, stats: Path, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``microkernel mount`` in the background; on the way out, make sure it is gone."""
    mnt.mkdir(exist_ok=True)
    log = mnt.with_suffix(".log")
    argv = [
        sys.executable,
        "-m",
        "microkernel",
        "--memory",
        MEMORY,
        "--stats",
        os.fspath(stats),
        "mount",
        *options,
        os.fspath(image),
        os.fspath(mnt),
    ]
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=env(), stdout=err, stderr=subprocess.STDOUT)
    try:
        _wait_mounted(proc, mnt, log)
        yield proc
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", os.fspath(mnt)], timeout=30, check=False)
        try:
            proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"microkernel mount did not exit: {log.read_text(errors='replace')}")


def _unmount(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    sh("fusermount3", "-u", mnt)
    assert proc.wait(timeout=EXIT_WAIT) == 0
    assert not os.path.ismount(mnt)


def test_shell_tools_on_a_mount(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    inner = os.urandom(200_000)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inner.bin").write_bytes(inner)
    (tmp_path / "hello.txt").write_bytes(b"hello\n")
    put(image, tmp_path / "dir")
    put(image, tmp_path / "hello.txt")
    big = os.urandom(2 * 2**20 + 77)
    (tmp_path / "big.bin").write_bytes(big)
    mnt, stats = tmp_path / "mnt", tmp_path / "stats.json"

    with mounted(image, mnt, stats) as proc:
        assert sh("ls", mnt).split() == [b"dir", b"hello.txt"]
        assert sh("cat", mnt / "hello.txt") == b"hello\n"
        digest = sh("sha256sum", mnt / "dir" / "inner.bin").split()[0].decode()
        assert digest == hashlib.sha256(inner).hexdigest()
        sh("cp", tmp_path / "big.bin", mnt / "big.bin")
        sh("mkdir", "-p", mnt / "new" / "sub")
        sh("mv", mnt / "hello.txt", mnt / "new" / "sub" / "hello.txt")
        sh("sh", "-c", f"echo more >> '{mnt}/new/sub/hello.txt'")
        sh("rm", mnt / "dir" / "inner.bin")
        sh("rmdir", mnt / "dir")
        digest = sh("sha256sum", mnt / "big.bin").split()[0].decode()
        assert digest == hashlib.sha256(big).hexdigest()
        _unmount(proc, mnt)

    assert_clean(image)
    assert listing(image) == {"/big.bin", "/new/", "/new/sub/", "/new/sub/hello.txt"}
    assert fetch(image, "/big.bin") == big
    assert fetch(image, "/new/sub/hello.txt") == b"hello\nmore\n"
    counters = json.loads(stats.read_bytes())
    assert counters["copies_by_reason"]["fuse"] >= len(big) + len(inner)


def test_sigterm_unmounts_and_shuts_down_cleanly(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    mnt = tmp_path / "mnt"
    with mounted(image, mnt, tmp_path / "stats.json") as proc:
        (mnt / "note.txt").write_bytes(b"written before SIGTERM\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_WAIT) == 0
        assert not os.path.ismount(mnt)

    assert_clean(image)
    assert fetch(image, "/note.txt") == b"written before SIGTERM\n"


def test_touch_d_on_the_mount_sets_the_modification_time(tmp_path: Path) -> None:
    """The guide's claim, checked: ``touch -d`` reaches the directory entry (mtools reads it)."""
    image = fat16(tmp_path / "disk.img")
    (tmp_path / "t.txt").write_bytes(b"t")
    put(image, tmp_path / "t.txt")
    mnt = tmp_path / "mnt"
    with mounted(image, mnt, tmp_path / "stats.json") as proc:
        sh("touch", "-d", "2001-02-03 04:05:06", mnt / "t.txt")
        assert abs(os.stat(mnt / "t.txt").st_mtime - time.mktime((2001, 2, 3, 4, 5, 6, 0, 0, -1))) <= 2
        _unmount(proc, mnt)
    assert b"2001-02-03" in sh("mdir", "-i", image, "::/t.txt")
    assert_clean(image)


# ------------------------------------------- the bridge in-process: lookup counts and forget
CYCLES = 2000


@pytest.mark.anyio
async def test_forget_keeps_the_file_systems_id_table_bounded(tmp_path: Path) -> None:
    """create + release + unlink + forget, 2000 times; then 200 lookups of existing files,
    forgotten: the FAT's table of ids ends where it began, and ids are never reused."""
    import pyfuse3

    import microkernel
    from clients.fuse import ImageOperations
    from servers.fat.server import FatServer

    image = fat16(tmp_path / "disk.img")
    ctx = pyfuse3.RequestContext()
    async with microkernel.boot(image=image, memory=MEMORY) as system:
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        ops = ImageOperations(await system.spawn("fuse"))
        root = pyfuse3.ROOT_INODE
        sub = (await ops.mkdir(root, b"sub", 0o755, ctx)).st_ino
        baseline = fat.volume.id_table_size
        seen: set[int] = set()
        for i in range(CYCLES):
            name = f"f{i % 7}.txt".encode()
            fi, attr = await ops.create(sub, name, 0o644, os.O_RDWR, ctx)
            await ops.release(fi.fh)
            await ops.unlink(sub, name, ctx)
            await ops.forget([(attr.st_ino, 1)])
            assert attr.st_ino not in seen, "a node was handed out twice"
            seen.add(attr.st_ino)
            assert fat.volume.id_table_size <= baseline + 1
        assert fat.volume.id_table_size == baseline
        assert len(ops.inodes) == 1  # only "sub" is still held by the (pretend) host

        for i in range(200):
            fi, attr = await ops.create(sub, f"keep{i}".encode(), 0o644, os.O_RDWR, ctx)
            await ops.release(fi.fh)
            await ops.forget([(attr.st_ino, 1)])
        assert fat.volume.id_table_size == baseline
        looked = [(await ops.lookup(sub, f"keep{i}".encode(), ctx)).st_ino for i in range(200)]
        again = await ops.lookup(sub, b"keep0", ctx)  # a second lookup: count 2 for keep0
        assert again.st_ino == looked[0]
        assert fat.volume.id_table_size == baseline + 200  # what the host references
        await ops.forget([(ino, 1) for ino in looked])
        assert fat.volume.id_table_size == baseline + 1  # keep0 is still looked up once
        await ops.forget([(looked[0], 1)])
        assert fat.volume.id_table_size == baseline
        fresh = await ops.lookup(sub, b"keep0", ctx)
        assert fresh.st_ino not in seen | set(looked)  # a forgotten id is never reused
        with pytest.raises(pyfuse3.FUSEError) as stale:
            await ops.getattr(looked[1], ctx)
        assert stale.value.errno == errno.ESTALE


@pytest.mark.anyio
async def test_an_open_file_keeps_its_id_through_forget(tmp_path: Path) -> None:
    """The kernel file driver keys the central file by the id: it stays until the last close."""
    import pyfuse3

    import microkernel
    from clients.fuse import ImageOperations
    from servers.fat.server import FatServer

    image = fat16(tmp_path / "disk.img")
    ctx = pyfuse3.RequestContext()
    async with microkernel.boot(image=image, memory=MEMORY) as system:
        fat = system.server("fat0")
        assert isinstance(fat, FatServer)
        ops = ImageOperations(await system.spawn("fuse"))
        baseline = fat.volume.id_table_size
        fi, attr = await ops.create(pyfuse3.ROOT_INODE, b"held.txt", 0o644, os.O_RDWR, ctx)
        await ops.forget([(attr.st_ino, 1)])  # the host may not do this while open: we do
        assert fat.volume.id_table_size == baseline + 1
        proc = ops.proc
        assert (await proc.lookup(pyfuse3.ROOT_INODE, "held.txt")).file_id == attr.st_ino
        await ops.release(fi.fh)
        assert fat.volume.id_table_size == baseline + 1  # the lookup referenced it again
        await proc.syscall(Forget([attr.st_ino]), None)
        assert fat.volume.id_table_size == baseline
