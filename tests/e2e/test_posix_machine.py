"""A hypothesis state machine: open/close/read/write/rename/unlink from several processes.

Checked step by step against a model with POSIX semantics (names point at
files; an open handle keeps its file through renames, through being renamed
over and through unlink; data written through one handle is seen through every
other handle of the same file) and, at the end, by fsck.fat and mtools on the
image the system leaves behind. Runs on an aligned (zero-copy) and an
unaligned (copy path) volume. The system runs on an event loop in a thread
(anyio's blocking portal); each rule is one call into it.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import microkernel
from clients.file import File
from clients.process import UserProcess
from tests.e2e.conftest import MTOOLS_ENV, fsck_ok, mtype
from tests.oracles import require_tool

NAMES = ["/a.bin", "/Long File Name.dat", "/sub/c.bin", "/sub/Other Name.txt"]
PROCESSES = 2


class Handle:
    """An open file in the model: which process holds it and which file it is."""

    def __init__(self, proc: int, file: File, inode: int) -> None:
        self.proc, self.file, self.inode = proc, file, inode
        self.open = True


class PosixMachine(RuleBasedStateMachine):
    ALIGNED = True
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="posix-machine-"))
        self.image = self.tmp / "disk.img"
        args = ["-s", "8"] if self.ALIGNED else ["-a", "-s", "1", "-R", "3"]
        subprocess.run(
            ["mkfs.fat", "-C", "-F", "16", *args, str(self.image), "16384"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["mmd", "-i", str(self.image), "::/sub"],
            check=True,
            capture_output=True,
            env=MTOOLS_ENV,
        )
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._system_cm = self.portal.wrap_async_context_manager(
            microkernel.boot(image=self.image, memory="48M")
        )
        system = self._system_cm.__enter__()
        self.procs: list[UserProcess] = [
            self.portal.call(system.spawn, f"p{i}") for i in range(PROCESSES)
        ]
        self.names: dict[str, int] = {}  # path -> inode
        self.data: dict[int, bytearray] = {}  # inode -> bytes
        self.open_handles: list[Handle] = []
        self._inodes = itertools.count(1)

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def _key(self, path: str) -> str | None:
        """The model's name for ``path``: FAT folds case."""
        return next((n for n in self.names if n.lower() == path.lower()), None)

    # ------------------------------------------------------------------ rules
    @rule(target=handles, proc=st.integers(0, PROCESSES - 1), path=st.sampled_from(NAMES))
    def open_file(self, proc: int, path: str) -> Handle:
        key = self._key(path)
        if key is None:
            file = self.call(self.procs[proc].open, path, "x+b")
            inode = next(self._inodes)
            self.names[path] = inode
            self.data[inode] = bytearray()
        else:
            file = self.call(self.procs[proc].open, path.upper(), "r+b")  # any case reaches it
            inode = self.names[key]
        handle = Handle(proc, file, inode)
        self.open_handles.append(handle)
        return handle

    @rule(handle=consumes(handles))
    def close(self, handle: Handle) -> None:
        if handle.open:
            self.call(handle.file.close)
            handle.open = False
            self.open_handles.remove(handle)

    @rule(
        handle=handles,
        offset=st.integers(0, 20_000),
        data=st.binary(min_size=1, max_size=9000),
    )
    def write(self, handle: Handle, offset: int, data: bytes) -> None:
        if not handle.open:
            return
        handle.file.seek(offset)
        assert self.call(handle.file.write, data) == len(data)
        content = self.data[handle.inode]
        if len(content) < offset:
            content.extend(bytes(offset - len(content)))
        content[offset : offset + len(data)] = data

    @rule(handle=handles, offset=st.integers(0, 30_000), size=st.integers(0, 12_000))
    def read(self, handle: Handle, offset: int, size: int) -> None:
        if not handle.open:
            return
        handle.file.seek(offset)
        got = self.call(handle.file.read, size)
        assert got == bytes(self.data[handle.inode][offset : offset + size])

    @precondition(lambda self: bool(self.names))
    @rule(
        proc=st.integers(0, PROCESSES - 1), src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES)
    )
    def rename(self, proc: int, src: str, dst: str) -> None:
        key = self._key(src)
        if key is None or src.lower() == dst.lower():
            return
        self.call(self.procs[proc].rename, key, dst)
        inode = self.names.pop(key)
        replaced = self._key(dst)
        if replaced is not None:
            del self.names[replaced]
        self.names[dst] = inode

    @precondition(lambda self: bool(self.names))
    @rule(proc=st.integers(0, PROCESSES - 1), path=st.sampled_from(NAMES))
    def unlink(self, proc: int, path: str) -> None:
        key = self._key(path)
        if key is None:
            return
        self.call(self.procs[proc].unlink, key)
        del self.names[key]

    @invariant()
    def sizes_agree(self) -> None:
        for handle in self.open_handles:
            assert handle.file.size == len(self.data[handle.inode])

    # --------------------------------------------------------------- the end
    def teardown(self) -> None:
        try:
            for handle in list(self.open_handles):
                self.call(handle.file.close)
            contents = {path: bytes(self.data[inode]) for path, inode in self.names.items()}
            for proc in self.procs:
                self.call(proc.exit)
            self._system_cm.__exit__(None, None, None)
            self._portal_cm.__exit__(None, None, None)
            fsck_ok(self.image)
            for path, content in contents.items():
                assert mtype(self.image, path) == content, path
            listed = subprocess.run(
                ["mdir", "-b", "-/", "-i", str(self.image), "::/"],
                capture_output=True,
                env=MTOOLS_ENV,
                check=True,
            ).stdout.decode()
            on_disk = {line.strip().removeprefix("::").lower() for line in listed.splitlines()}
            on_disk = {p for p in on_disk if p and not p.endswith("/")}
            assert on_disk == {p.lower() for p in contents}, (on_disk, contents)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class AlignedMachine(PosixMachine):
    ALIGNED = True


class UnalignedMachine(PosixMachine):
    ALIGNED = False


MACHINE_SETTINGS = settings(max_examples=20, stateful_step_count=30, deadline=None)


@pytest.mark.parametrize(
    "machine", [AlignedMachine, UnalignedMachine], ids=["aligned", "unaligned"]
)
def test_posix_semantics_across_processes(machine: type[PosixMachine]) -> None:
    require_tool("mkfs.fat", "fsck.fat", "mmd", "mtype", "mdir")
    case = machine.TestCase
    case.settings = MACHINE_SETTINGS
    case("runTest").runTest()
