"""User processes as the kernel sees them: a pid, an address space, a reply-only port.

A process is cheap: a registered port (no inbox: it only receives replies to
its system calls, through futures), a reserved virtual range, and a record in
the :class:`ProcessTable` that the kernel file driver consults to map frames
into the right address space. The file library (``clients``) wraps it with
the user-facing API.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from microkernel.addrspace import AddressSpace, make_address_space
from microkernel.ipc import Endpoint, Router
from microkernel.memory import PhysicalMemory

DEFAULT_ADDRESS_SPACE = 1 << 24  # 16 MiB for the process's own use; each open file gets a window


@dataclass(eq=False)
class Process:
    pid: int
    name: str
    port: str
    aspace: AddressSpace
    endpoint: Endpoint
    alive: bool = True
    windows: dict[int, AddressSpace] = field(default_factory=dict)  # open handle -> file window


class ProcessTable:
    """pid -> Process; creates and destroys processes for the kernel."""

    def __init__(self, router: Router, memory: PhysicalMemory) -> None:
        self.router = router
        self.memory = memory
        self._pids = itertools.count(1)
        self.quota_frames: int | None = None  # private frames per process (boot sets it)
        self.by_pid: dict[int, Process] = {}
        self.by_port: dict[str, Process] = {}

    def create(self, name: str, *, address_space: int = DEFAULT_ADDRESS_SPACE) -> Process:
        pid = next(self._pids)
        port = f"proc:{pid}"
        endpoint = self.router.register(port, capacity=0)
        self.memory.set_quota(port, self.quota_frames)
        proc = Process(pid, name, port, make_address_space(self.memory, address_space), endpoint)
        self.by_pid[pid] = proc
        self.by_port[port] = proc
        return proc

    def destroy(self, proc: Process) -> None:
        if not proc.alive:
            return
        proc.alive = False
        self.by_pid.pop(proc.pid, None)
        self.by_port.pop(proc.port, None)
        self.router.unregister(proc.port)
        for window in proc.windows.values():
            window.close()
        proc.windows.clear()
        proc.aspace.close()
        self.memory.forget_owner(proc.port)  # after the mappings are gone

    def __len__(self) -> int:
        return len(self.by_pid)
