"""Random operation sequences against an in-memory model; the image must then satisfy
fsck.fat and read back identically through mtools and through a fresh mount."""

from __future__ import annotations

import asyncio
import errno
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from servers.fat.mkfs import make_filesystem
from servers.fat.sectorio import FileSectorIO
from servers.fat.volume import FatVolume
from tests.fat.helpers import Tree, mtools_tree, volume_tree
from tests.oracles import fsck_fat, require_tool

NAMES = ["a", "B.txt", "long file name.dat", "Ünï", "x y z", "ÄÖ.md", "lower.c", "A"]
CLUSTER = 512


class FatMachine(RuleBasedStateMachine):
    """Drives one mounted volume; the model maps paths to bytes (files) or None (dirs)."""

    size: ClassVar[int] = 1 << 20
    fat: ClassVar[int] = 12

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="fatsm-"))
        self.image = self.tmp / "sm.img"
        make_filesystem(self.image, self.size, fat=self.fat, cluster_size=CLUSTER)
        self.runner = asyncio.Runner()
        self.io = FileSectorIO(self.image)
        self.vol = self.run(FatVolume.mount(self.io))
        self.model: Tree = {}

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.runner.run(coro)

    def expect(self, coro: Coroutine[Any, Any, Any], err: int | None) -> Any:
        """Run an operation; it must fail with ``err`` (or succeed when ``err`` is None)."""
        if err is None:
            return self.run(coro)
        try:
            self.run(coro)
        except OSError as exc:
            assert exc.errno == err, (exc, err)
        else:
            raise AssertionError(f"expected errno {err}")
        return None

    # -- model helpers --------------------------------------------------------------
    def find(self, path: str) -> str | None:
        return next((k for k in self.model if k.upper() == path.upper()), None)

    def dirs(self) -> list[str]:
        return ["/", *sorted(k for k, v in self.model.items() if v is None)]

    def files(self) -> list[str]:
        return sorted(k for k, v in self.model.items() if v is not None)

    def children(self, d: str) -> list[str]:
        prefix = d.upper().rstrip("/") + "/"
        return [k for k in self.model if k.upper().startswith(prefix)]

    @staticmethod
    def join(d: str, name: str) -> str:
        return f"{d.rstrip('/')}/{name}"

    # -- rules ------------------------------------------------------------------------
    @rule(data=st.data(), name=st.sampled_from(NAMES), directory=st.booleans())
    def create(self, data: st.DataObject, name: str, directory: bool) -> None:
        parent = data.draw(st.sampled_from(self.dirs()))
        path = self.join(parent, name)
        op = self.vol.mkdir(path) if directory else self.vol.create(path)
        if self.find(path) is not None:
            self.expect(op, errno.EEXIST)
            return
        self.expect(op, None)
        self.model[path] = None if directory else b""

    @precondition(lambda self: bool(self.files()))
    @rule(data=st.data(), offset=st.integers(0, 3 * CLUSTER), size=st.integers(1, 2 * CLUSTER),
          fill=st.integers(1, 255))
    def write(self, data: st.DataObject, offset: int, size: int, fill: int) -> None:
        path = data.draw(st.sampled_from(self.files()))
        payload = bytes([fill]) * size
        self.expect(self.vol.write(path, offset, payload), None)
        old = self.model[path] or b""
        grown = old.ljust(offset + size, b"\0")
        self.model[path] = grown[:offset] + payload + grown[offset + size:]

    @precondition(lambda self: bool(self.files()))
    @rule(data=st.data(), size=st.integers(0, 4 * CLUSTER))
    def truncate(self, data: st.DataObject, size: int) -> None:
        path = data.draw(st.sampled_from(self.files()))
        self.expect(self.vol.set_size(path, size), None)
        self.model[path] = (self.model[path] or b"")[:size].ljust(size, b"\0")

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(self.model)))
        if self.model[path] is not None:
            self.expect(self.vol.unlink(path), None)
            del self.model[path]
        elif self.children(path):
            self.expect(self.vol.rmdir(path), errno.ENOTEMPTY)
        else:
            self.expect(self.vol.rmdir(path), None)
            del self.model[path]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def rename(self, data: st.DataObject, name: str) -> None:
        src = data.draw(st.sampled_from(sorted(self.model)))
        dst = self.join(data.draw(st.sampled_from(self.dirs())), name)
        self.expect(self.vol.rename(src, dst), self._rename_errno(src, dst))

    def _rename_errno(self, src: str, dst: str) -> int | None:
        """Apply a rename to the model; return the errno the volume must give instead."""
        is_dir = self.model[src] is None
        if is_dir and (dst.upper() + "/").startswith(src.upper() + "/") and (
                dst.upper() != src.upper()):
            return errno.EINVAL
        existing = self.find(dst)
        if existing is not None and existing != src:
            if self.model[existing] is None and not is_dir:
                return errno.EISDIR
            if self.model[existing] is not None and is_dir:
                return errno.ENOTDIR
            if self.model[existing] is None and self.children(existing):
                return errno.ENOTEMPTY
            del self.model[existing]
        moved = {k: v for k, v in self.model.items() if k == src or k.upper().startswith(
            src.upper() + "/")}
        for k in moved:
            del self.model[k]
        for k, v in moved.items():
            self.model[dst + k[len(src):]] = v
        return None

    @invariant()
    def free_count_exact(self) -> None:
        assert self.vol.fat.free_count == self.vol.fat.recount_free()

    def teardown(self) -> None:
        try:
            self.run(self.vol.unmount())
            self.io.close()
            assert fsck_fat(self.image).returncode == 0, fsck_fat(self.image).stdout.decode()
            assert mtools_tree(self.image) == self.model

            async def reread() -> Tree:
                io = FileSectorIO(self.image, read_only=True)
                vol = await FatVolume.mount(io, read_only=True)
                try:
                    assert vol.problems == []
                    return await volume_tree(vol)
                finally:
                    io.close()

            assert self.run(reread()) == self.model
        finally:
            self.runner.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class Fat32Machine(FatMachine):
    size: ClassVar[int] = 34 << 20
    fat: ClassVar[int] = 32


_SETTINGS = settings(max_examples=25, stateful_step_count=15, deadline=None)


@pytest.mark.oracle
def test_fat12_random_operations() -> None:
    require_tool("fsck.fat", "mdir", "mcopy")
    run_state_machine_as_test(FatMachine, settings=_SETTINGS)


@pytest.mark.oracle
def test_fat32_random_operations() -> None:
    require_tool("fsck.fat", "mdir", "mcopy")
    run_state_machine_as_test(
        Fat32Machine, settings=settings(_SETTINGS, max_examples=10))
