"""Reading many small files: the open fetches each straight from the cache, read ahead.

docs/architecture.md §4: the file system answers the open of a small file with
its extents, so the kernel file driver asks the cache at once (no MapRange);
once a second file of a directory is opened, the FAT server reads the
directory's small files into the cache ahead of the opens, a batch per driver
command. The cache's pages are the only copy of those sectors, so nothing read
ahead can go stale: a write by another process lands in the very pages, and a
new file on the clusters of an unlinked one is read as the new file.
"""

from __future__ import annotations

import random

import pytest

import microkernel
from microkernel.boot import System
from microkernel.config import DeviceConfig, SystemConfig, default_capabilities
from servers.fat.protocol import FIRST_CLUSTER
from servers.fat.server import FatServer
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype

pytestmark = pytest.mark.anyio

N = 40


def content(i: int) -> bytes:
    return random.Random(i).randbytes(4096 if i % 7 else 1 + 300 * i)  # some not a whole page


FILES = {f"/d/f{i:02d}.bin": content(i) for i in range(N)}


def moved(system: System, before: dict[str, int]) -> dict[str, int]:
    now = system.statistics().messages_by_type
    return {k: now.get(k, 0) - before.get(k, 0) for k in (*now, *before)}


async def test_a_directory_read_in_any_order_costs_few_commands(make_image: ImageFactory) -> None:
    image = make_image({**FILES, "/d/big.bin": b"B" * 100_000})
    order = list(range(N))
    random.Random(3).shuffle(order)  # names in the reader's order: not the directory's
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("reader")
        before = dict(system.statistics().messages_by_type)
        copied = system.statistics().bytes_copied
        for i in order:
            async with await proc.open(f"/d/f{i:02d}.bin", "rb") as f:
                assert await f.read() == content(i)
        assert await proc.read_file("/d/big.bin") == b"B" * 100_000
        m = moved(system, before)
        assert m["MapRange"] == 1  # the big file's miss only: every small open knew its extents
        assert m["CacheRead"] == N + 1
        assert 1 <= m["CachePrefetch"] <= 6  # one pass over the directory, in batches
        assert m["Read"] <= 10  # device reads: the first files', the batches' and the big file's
        assert system.statistics().bytes_copied == copied  # zero-copy on an aligned volume


async def test_a_file_read_ahead_then_written_by_another_process_reads_the_new_bytes(
    make_image: ImageFactory,
) -> None:
    image = make_image(FILES)
    async with microkernel.boot(image=image, memory="64M") as system:
        reader, writer = await system.spawn("reader"), await system.spawn("writer")
        for i in (0, 1):  # the second open starts the read-ahead of f01.. onwards
            assert await reader.read_file(f"/d/f{i:02d}.bin") == content(i)
        async with await writer.open("/d/f05.bin", "r+b") as f:
            f.seek(100)
            await f.write(b"NEW" * 10)
        async with await writer.open("/d/f06.bin", "wb") as f:  # truncated and rewritten
            await f.write(b"short")
        five = content(5)[:100] + b"NEW" * 10 + content(5)[130:]
        assert await reader.read_file("/d/f05.bin") == five
        assert await reader.read_file("/d/f06.bin") == b"short"
    assert mtype(image, "/d/f05.bin") == five
    fsck_ok(image)


async def test_clusters_of_an_unlinked_file_read_ahead_are_read_as_their_new_owners(
    make_image: ImageFactory,
) -> None:
    """f04's cluster is read ahead, f04 is unlinked, and f03 grows onto that cluster: the
    reader sees zeros, then the writer's bytes there, never f04's."""
    image = make_image(FILES)
    async with microkernel.boot(image=image, memory="64M") as system:
        reader, writer = await system.spawn("reader"), await system.spawn("writer")
        for i in (0, 1, 2):
            assert await reader.read_file(f"/d/f{i:02d}.bin") == content(i)
        cluster = (await reader.stat("/d/f04.bin")).native[FIRST_CLUSTER]
        first = (await reader.stat("/d/f03.bin")).native[FIRST_CLUSTER]
        assert cluster == int(first) + 1  # f03's one cluster, then f04's
        await writer.unlink("/d/f04.bin")
        async with await writer.open("/d/f03.bin", "r+b") as f:
            await f.fsync()  # the free is on the disk: the cluster may be handed out again
            await f.truncate(8192)  # grows in place, onto f04's cluster
            fat = system.server("fat0")
            assert isinstance(fat, FatServer)
            assert fat.volume.fat.chain(int(first)) == [first, cluster]
            assert await reader.read_file("/d/f03.bin") == content(3) + bytes(4096)
            f.seek(5000)
            await f.write(b"OWNER" * 10)
        grown = content(3) + bytes(904) + b"OWNER" * 10 + bytes(4096 - 904 - 50)
        assert await reader.read_file("/d/f03.bin") == grown
        with pytest.raises(FileNotFoundError):
            await reader.read_file("/d/f04.bin")
        for i in range(5, N):  # the rest of the directory, read ahead before the unlink
            assert await reader.read_file(f"/d/f{i:02d}.bin") == content(i)
    assert mtype(image, "/d/f03.bin") == grown
    fsck_ok(image)


async def test_small_files_on_an_unaligned_volume(make_image: ImageFactory) -> None:
    image = make_image(FILES, aligned=False)
    async with microkernel.boot(image=image, memory="64M") as system:
        proc = await system.spawn("reader")
        for i in range(N):
            assert await proc.read_file(f"/d/f{i:02d}.bin") == content(i)


async def test_a_table_without_read_ahead_or_direct_reads_still_reads_everything(
    make_image: ImageFactory,
) -> None:
    """Both shortcuts are optional: a capability table that lets the file system send no
    CachePrefetch and the kernel file driver no CacheRead falls back to MapRange, whole."""
    image = make_image(FILES)
    table = default_capabilities(["nvme0"], ["fat0"])
    fs_rules = table["fat0"]
    vfs_rules = table["vfs"]
    assert isinstance(fs_rules, dict) and isinstance(vfs_rules, dict)
    fs_rules["cache"] = [t for t in fs_rules["cache"] if t != "CachePrefetch"]
    vfs_rules["cache"] = [t for t in vfs_rules["cache"] if t != "CacheRead"]
    cfg = SystemConfig(memory="64M", devices=[DeviceConfig(image=str(image))],
                       capabilities=dict(table))
    async with microkernel.boot(config=cfg) as system:
        proc = await system.spawn("reader")
        before = dict(system.statistics().messages_by_type)
        for i in range(N):
            assert await proc.read_file(f"/d/f{i:02d}.bin") == content(i)
        m = moved(system, before)
        assert m["MapRange"] == N and m.get("CachePrefetch", 0) == 0
        assert system.statistics().refusals_by_type["CachePrefetch"] >= 1
