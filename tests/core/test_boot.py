"""Boot from a TOML configuration, ordered start and reverse stop, the CLI skeleton."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import microkernel
from microkernel.cli import main
from tests.oracles import require_tool

pytestmark = pytest.mark.anyio


async def test_boot_from_toml_starts_in_order_and_stops_cleanly(tmp_path: Path) -> None:
    require_tool("fsck.fat")
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size="32M", fat=16)
    config = tmp_path / "system.toml"
    config.write_text(
        'memory = "48M"\nlow_memory = "16M"\n'
        "[cache]\npages = 2048\nwriteback_interval = 0.2\n"
        '[[devices]]\nname = "ahci0"\ndriver = "ahci"\nimage = "disk.img"\n'
    )
    async with microkernel.boot(config=config) as system:
        assert [s.name for s in system.servers] == ["ahci0", "cache", "fat0", "vfs"]
        assert system.memory.low_frames == 4096
        proc = await system.spawn("p")
        await proc.write_file("/hello.txt", b"hi")
        assert await proc.listdir("/") == ["hello.txt"]
        started = system.statistics()
        assert started.messages_total > 0 and started.syscalls >= 2
    assert system.servers == []
    done = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout
    # The dirty flag is cleared at a clean unmount: fsck would say so otherwise.
    assert b"dirty" not in done.stdout.lower()


async def test_statistics_snapshot_is_immutable_and_diffable(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    microkernel.mkfs(image, size="32M", fat=16)
    async with microkernel.boot(image=image, memory="32M") as system:
        before = system.statistics()
        proc = await system.spawn("p")
        await proc.listdir("/")
        after = system.statistics()
        with pytest.raises(AttributeError):
            after.syscalls = 0  # type: ignore[misc]
        delta = after.delta(before)
        assert delta.syscalls == 1
        assert delta.messages_by_type["ReadDir"] == 1


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert main(["mkfs", "/nonexistent-dir/x.img", "--size", "lots"]) == 2


def test_cli_mkfs_makes_an_image_fsck_accepts(tmp_path: Path) -> None:
    require_tool("fsck.fat")
    image = tmp_path / "m.img"
    done = subprocess.run(
        [sys.executable, "-m", "microkernel", "mkfs", str(image), "--size", "40M", "--fat", "16"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True).returncode == 0
