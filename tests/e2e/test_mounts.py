"""Several devices: the first volume at /, each further one at /<device name>."""

from __future__ import annotations

import errno

import pytest

import microkernel
from microkernel.config import DeviceConfig, SystemConfig
from servers.vfs.mounts import MountTable
from tests.e2e.conftest import ImageFactory, fsck_ok, mtype

pytestmark = pytest.mark.anyio


def test_mount_table_routes_by_longest_prefix() -> None:
    table = MountTable({"/": "fat0", "/ahci1": "fat1", "/ahci1/deep": "fat2"})
    assert table.route("/docs/a.txt") == ("fat0", "/docs/a.txt")
    assert table.route("/AHCI1/x/Y.txt") == ("fat1", "/x/Y.txt")
    assert table.route("/ahci1") == ("fat1", "/")
    assert table.route("/ahci1/deep/z") == ("fat2", "/z")
    assert table.route("/ahci10/z") == ("fat0", "/ahci10/z")
    assert table.below("/") == [("ahci1", "fat1")]
    with pytest.raises(ValueError):
        MountTable({"/x": "fat0"})


async def test_two_devices_two_volumes(make_image: ImageFactory) -> None:
    first = make_image({"/on-first.txt": b"one"})
    second = make_image({"/on-second.txt": b"two"}, aligned=False)
    cfg = SystemConfig(
        memory="64M",
        devices=[
            DeviceConfig(image=str(first), driver="nvme"),
            DeviceConfig(image=str(second), driver="ahci"),
        ],
    )
    async with microkernel.boot(config=cfg) as system:
        assert [s.name for s in system.servers] == ["nvme0", "ahci1", "cache", "fat0", "fat1", "vfs"]
        proc = await system.spawn("p")
        assert sorted(await proc.listdir("/")) == ["ahci1", "on-first.txt"]
        assert await proc.listdir("/ahci1") == ["on-second.txt"]
        assert await proc.read_file("/ahci1/on-second.txt") == b"two"
        await proc.write_file("/ahci1/new.bin", b"N" * 10_000)
        await proc.mkdir("/ahci1/dir")
        assert (await proc.stat("/ahci1/dir")).is_dir
        assert not (await proc.statfs("/ahci1")).aligned
        assert (await proc.statfs("/")).aligned
        with pytest.raises(OSError) as info:
            await proc.rename("/on-first.txt", "/ahci1/moved.txt")
        assert info.value.errno == errno.EXDEV
    fsck_ok(first)
    fsck_ok(second)
    assert mtype(second, "/new.bin") == b"N" * 10_000
