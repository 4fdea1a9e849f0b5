"""One writer per image (issue 10): every command, the mount and ``boot()`` lock the image.

A second writer is refused at once with the holder's pid; readers share. The
holders here are real: a ``boot()`` in another process, a FUSE mount, or two
CLI copies started together; the image is judged by ``fsck.fat -n`` after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from microkernel import boot
from microkernel.imagelock import ImageInUse
from tests.oracles import require_tool
from tests.tools.helpers import ORACLES, REPO, assert_clean, cli, env, error, fat16, listing, ok

HOLD = textwrap.dedent(
    """
    import sys, anyio
    from microkernel import boot

    async def main() -> None:
        async with boot(image=sys.argv[1], memory="64M", read_only=sys.argv[2] == "ro"):
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)

    anyio.run(main)
    """
)


@pytest.fixture(autouse=True)
def _oracles() -> None:
    require_tool(*ORACLES)


@contextmanager
def held(image: Path, mode: str) -> Iterator[int]:
    """Another process with the image booted (``rw`` or ``ro``) until the block ends; its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, os.fspath(image), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    (tmp_path / "f.txt").write_bytes(b"f")
    with held(image, "rw") as pid:
        done = cli("cp", tmp_path / "f.txt", f"{image}::/f.txt")
        assert done.returncode == 1
        assert error(done).strip() == (
            f"microkernel cp: {image}: in use by another microkernel (pid {pid})"
        )
        reader = cli("ls", f"{image}::/")  # a reader would see a half-written volume
        assert reader.returncode == 1 and f"(pid {pid})" in error(reader)
    ok("cp", tmp_path / "f.txt", f"{image}::/f.txt")  # released when the holder shut down
    assert listing(image) == {"/f.txt"}
    assert_clean(image)


def test_readers_share_and_keep_writers_out(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    ok("mkdir", f"{image}::/d")
    with held(image, "ro") as pid:
        assert ok("ls", f"{image}::/").stdout.split() == [b"d"]
        refused = cli("rmdir", f"{image}::/d")
        assert refused.returncode == 1 and f"(pid {pid})" in error(refused)
    assert listing(image) == {"/d/"}


def test_two_copies_at_once_never_corrupt_the_image(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    trees = []
    for name in ("one", "two"):
        tree = tmp_path / name
        tree.mkdir()
        for i in range(8):
            (tree / f"{i}.bin").write_bytes(os.urandom(20_000))
        trees.append(tree)
    argv = [sys.executable, "-m", "microkernel", "--memory", "64M", "cp", "-r"]
    procs = [
        subprocess.Popen([*argv, tree, f"{image}::/"], stderr=subprocess.PIPE, cwd=REPO, env=env())
        for tree in trees
    ]
    results = [(p.wait(timeout=60), p.stderr.read().decode() if p.stderr else "") for p in procs]
    for proc in procs:
        if proc.stderr:
            proc.stderr.close()
    copied = {tree.name for tree, (code, _) in zip(trees, results, strict=True) if code == 0}
    for code, text in results:
        assert code == 0 or "in use by another microkernel (pid " in text, text
    assert copied, results  # at least one of them ran
    assert {f"/{name}/" for name in copied} <= listing(image)
    for name in copied:
        assert {f"/{name}/{i}.bin" for i in range(8)} <= listing(image)
    assert_clean(image)


@pytest.mark.anyio
async def test_boot_locks_in_one_process_too(tmp_path: Path) -> None:
    """Open-file-description locks: a second boot() in the same process is refused as well."""
    image = fat16(tmp_path / "disk.img")
    async with boot(image=image, memory="64M", read_only=True):
        async with boot(image=image, memory="64M", read_only=True) as second:
            assert await (await second.spawn()).listdir("/") == []
        with pytest.raises(ImageInUse) as info:
            async with boot(image=image, memory="64M"):
                pass
    assert info.value.pid == os.getpid()
    async with boot(image=image, memory="64M") as system:  # released
        await (await system.spawn()).mkdir("/ok")
    assert listing(image) == {"/ok/"}


def test_mount_holds_the_image_against_cp_and_a_second_mount(tmp_path: Path) -> None:
    pytest.importorskip("pyfuse3")
    from tests.tools.test_fuse import _unmount, mounted, require_fuse

    require_fuse()
    image = fat16(tmp_path / "disk.img")
    (tmp_path / "f.txt").write_bytes(b"f")
    with mounted(image, tmp_path / "mnt", tmp_path / "stats.json") as mount:
        done = cli("cp", tmp_path / "f.txt", f"{image}::/f.txt")
        assert done.returncode == 1
        assert error(done).strip() == (
            f"microkernel cp: {image}: in use by another microkernel (pid {mount.pid})"
        )
        (tmp_path / "mnt2").mkdir()
        second = cli("mount", image, tmp_path / "mnt2")
        assert second.returncode == 1 and f"(pid {mount.pid})" in error(second)
        (tmp_path / "mnt" / "via-mount.txt").write_bytes(b"m")
        _unmount(mount, tmp_path / "mnt")
    assert listing(image) == {"/via-mount.txt"}
    assert_clean(image)


def test_mount_read_only_refuses_changes(tmp_path: Path) -> None:
    pytest.importorskip("pyfuse3")
    from tests.tools.test_fuse import _unmount, mounted, require_fuse

    require_fuse()
    image = fat16(tmp_path / "disk.img")
    ok("mkdir", f"{image}::/d")
    before = image.read_bytes()
    with mounted(image, tmp_path / "mnt", tmp_path / "s.json", "--read-only") as mount:
        assert sorted(os.listdir(tmp_path / "mnt")) == ["d"]
        with pytest.raises(OSError):
            (tmp_path / "mnt" / "x.txt").write_bytes(b"x")
        assert ok("ls", f"{image}::/").stdout.split() == [b"d"]  # readers share
        _unmount(mount, tmp_path / "mnt")
    assert image.read_bytes() == before


def test_mkfs_force_does_not_replace_an_image_in_use(tmp_path: Path) -> None:
    image = fat16(tmp_path / "disk.img")
    ok("mkdir", f"{image}::/keep")
    with held(image, "ro") as pid:
        done = cli("mkfs", image, "--size", "8M", "--force")
        assert done.returncode == 1 and f"(pid {pid})" in error(done)
    assert listing(image) == {"/keep/"}


def test_lock_modes_and_an_image_named_twice(tmp_path: Path) -> None:
    """Shared + shared is fine, exclusive excludes both ways; one image under two names is
    locked once, in the stronger mode (so a system with two devices on it does not refuse
    itself)."""
    from microkernel import imagelock

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    alias = tmp_path / "alias.img"
    alias.symlink_to(image)
    with imagelock.locked([(str(image), False), (str(alias), True)]):
        with pytest.raises(ImageInUse) as info:
            imagelock.acquire(str(image), writing=False)
        assert info.value.pid == os.getpid()
        assert str(info.value) == f"{image}: in use by another microkernel (pid {os.getpid()})"
    readers = [imagelock.acquire(str(image), writing=False) for _ in range(2)]
    try:
        with pytest.raises(ImageInUse):
            imagelock.acquire(str(alias), writing=True)
    finally:
        for fd in readers:
            os.close(fd)
    os.close(imagelock.acquire(str(image), writing=True))  # all released
