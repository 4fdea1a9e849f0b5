"""Boot: assemble a system from a configuration, start servers in order, stop them in reverse.

Order (``docs/architecture.md`` §2): device drivers, the disc cache, the file systems, the
kernel file driver. Each server reports ``started`` through anyio's
``task_status`` only once it is ready (a file system has mounted its volume), so
a later server can rely on an earlier one. Shutdown runs each server's
``teardown`` while the servers below it still run: the kernel file driver
writes back dirty pages, the file system writes its FAT, FSInfo and clears the
dirty flag, the cache flushes, and the drivers fsync the image.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from microkernel import imagelock
from microkernel.config import (
    DeviceConfig,
    SystemConfig,
    TraceConfig,
    default_capabilities,
    load_config,
    validate,
)
from microkernel.ipc import Router
from microkernel.memory import PhysicalMemory, dma32_reserve
from microkernel.process import ProcessTable
from microkernel.server import Server
from microkernel.stats import Counters, Statistics
from microkernel.trace import Tracer, configure_logging, log
from microkernel.units import parse_size

# The layers above the router, loaded by name: a layer that is not built is reported in
# ``System.missing``; nothing in ``microkernel/`` imports a server or the file library.
CACHE_SERVER = "servers.cache.server:CacheServer"
FAT_SERVER = "servers.fat.server:FatServer"
FILE_DRIVER = "servers.vfs.server:VfsServer"
FS_PROTOCOL = "servers.fs.protocol:FsRequest"
FILE_LIBRARY = "clients.process:UserProcess"


class System:
    """A running system: the router, RAM, the servers, the processes and the counters."""

    def __init__(
        self, config: SystemConfig, router: Router, memory: PhysicalMemory, tracer: Tracer
    ) -> None:
        self.config = config
        self.router = router
        self.memory = memory
        self.tracer = tracer
        self.counters = router.counters
        self.processes = ProcessTable(router, memory)
        self.processes.quota_frames = config.process_quota_frames
        self.servers: list[Server] = []
        self.missing: list[str] = []
        self.kernel = router.register("kernel", capacity=0)
        # perf_counter() when the last server stopped: every volume unmounted, written back
        # and flushed. What follows (freeing the RAM memfd) powers the machine off.
        self.stopped_at: float | None = None

    def server(self, name: str) -> Server:
        for srv in self.servers:
            if srv.name == name:
                return srv
        raise KeyError(f"no server named {name!r} (running: {[s.name for s in self.servers]})")

    @property
    def filesystems(self) -> list[str]:
        """The file-system servers: those that speak the file-system protocol."""
        protocol = _import(FS_PROTOCOL)
        return [s.name for s in self.servers if protocol is not None and s.protocol == protocol]

    async def spawn(self, name: str = "process") -> Any:
        """Create a user process with its own address space, bound to the kernel file driver.

        The process comes wrapped in the file library (``clients/process.py``:
        ``open``, ``stat``, ...), loaded by name like the servers.
        """
        library = _import(FILE_LIBRARY)
        if library is None:
            raise RuntimeError("the file library (clients.process) is not installed")
        if "vfs" not in self.router.ports:
            raise RuntimeError(f"no kernel file driver is running; missing: {self.missing}")
        return library(self, self.processes.create(name))

    def statistics(self) -> Statistics:
        """An immutable snapshot of the counters (``docs/guide.md``)."""
        return self.counters.snapshot(frames_free=self.memory.frames_free)


def _config_from_kwargs(
    image: str | Path | None,
    driver: str,
    memory: int | str,
    trace: str | Path | None,
    device_options: dict[str, Any],
) -> SystemConfig:
    dev_fields = {
        k: device_options.pop(k)
        for k in list(device_options)
        if k in DeviceConfig.__struct_fields__
    }
    devices = (
        [DeviceConfig(image=str(image), driver=driver, **dev_fields, options=device_options)]
        if image
        else []
    )
    return SystemConfig(
        memory=memory,
        devices=devices,
        trace=TraceConfig(path=None if trace is None else str(trace)),
    )


def _import(path: str) -> Callable[..., Any] | None:
    """``module:attr`` or None when that layer is not built (reported in ``System.missing``)."""
    module, attr = path.split(":")
    try:
        obj: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return obj


@asynccontextmanager
async def boot(
    image: str | Path | None = None,
    *,
    driver: str = "nvme",
    memory: int | str = 256 * 2**20,
    config: str | Path | SystemConfig | None = None,
    trace: str | Path | None = None,
    log_level: str = "warning",
    **device_options: Any,
) -> AsyncIterator[System]:
    """Boot the whole system; leaving the block shuts it down cleanly (flush, clean volume)."""
    if isinstance(config, SystemConfig):
        cfg = validate(config)
    elif config is not None:
        cfg = load_config(config)
        for dev in cfg.devices:  # boot(config=..., read_only=True) opens every image read-only
            dev.read_only = dev.read_only or bool(device_options.get("read_only"))
    else:
        cfg = validate(_config_from_kwargs(image, driver, memory, trace, dict(device_options)))
    if trace is not None:
        cfg.trace.path = str(trace)
    tracer = configure_logging(
        level=cfg.trace.level if log_level == "warning" else log_level, trace_path=cfg.trace.path
    )
    counters = Counters()
    mem = PhysicalMemory(
        _round_pages(cfg.memory_bytes),
        low_size=_low(cfg),
        counters=counters,
        populate=cfg.populate_memory,
    )
    mem.tracer = tracer
    mem.low_reserve = dma32_reserve(mem.low_frames)
    devices = [d.name for d in cfg.devices]
    filesystems = [f"fat{i}" for i in range(len(cfg.devices))]
    caps = cfg.capabilities or default_capabilities(devices, filesystems)
    router = Router(capabilities=caps, counters=counters, tracer=tracer)
    system = System(cfg, router, mem, tracer)
    failure: Exception | None = None
    locks = contextlib.ExitStack()
    try:
        locks.enter_context(imagelock.locked([(d.image, not d.read_only) for d in cfg.devices]))
        async with anyio.create_task_group() as tg:
            try:
                await _start_all(system, tg)
                yield system
            except Exception as exc:  # re-raised below, unwrapped from the task group
                failure = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop_all(system)
                tg.cancel_scope.cancel()
    finally:
        tracer.close()
        mem.close()
        locks.close()  # after the drivers closed the images
    if failure is not None:
        raise failure


def mount_points(devices: list[DeviceConfig], filesystems: list[str]) -> dict[str, str]:
    """The first volume at ``/``, every further one at ``/<device name>``."""
    return {
        ("/" if i == 0 else f"/{dev.name}"): fs
        for i, (dev, fs) in enumerate(zip(devices, filesystems, strict=True))
    }


def _held_metadata_pages(cfg: SystemConfig, system: System) -> int:
    """How many metadata pages a file system may keep pinned for its lazy write order.

    At most 1/16 of the cache (and 256 pages), so a small cache keeps room for file data:
    a 512-page cache gave half of itself to held FAT pages and a writer met CacheFull.
    """
    pages = cfg.cache.pages or system.memory.frames_total // 2
    return max(8, min(256, pages // 16))


def _round_pages(n: int) -> int:
    return n - n % 4096


def _low(cfg: SystemConfig) -> int | None:
    low = cfg.low_memory_bytes
    return None if low is None else _round_pages(low)


async def _start(system: System, tg: anyio.abc.TaskGroup, server: Server) -> None:
    await tg.start(server.serve)
    system.servers.append(server)


async def _start_all(system: System, tg: anyio.abc.TaskGroup) -> None:
    from drivers.registry import load_driver

    cfg = system.config
    for dev in cfg.devices:
        cls = load_driver(dev.driver)
        drv = cls(
            dev.name,
            system.router,
            system.memory,
            dev.image,
            logical_sector_size=dev.logical_sector_size,
            physical_sector_size=dev.physical_sector_size,
            alignment_offset=dev.alignment_offset,
            read_only=dev.read_only,
            **dev.options,
        )
        await _start(system, tg, drv)
    cache_cls = _import(CACHE_SERVER)
    if cache_cls is None:
        system.missing.append("disc cache (servers.cache)")
        return
    pages = cfg.cache.pages or system.memory.frames_total // 2
    await _start(
        system,
        tg,
        cache_cls(
            "cache",
            system.router,
            system.memory,
            devices={d.name: d.name for d in cfg.devices},
            capacity_pages=pages,
            low_water=cfg.cache.low_water,
            high_water=cfg.cache.high_water,
            writeback_interval=cfg.cache.writeback_interval,
            io_timeout=cfg.cache.io_timeout,
            low_share=cfg.cache.low_share,
        ),
    )
    fat_cls = _import(FAT_SERVER)
    if fat_cls is None:
        system.missing.append("FAT file system (servers.fat.server)")
        return
    for i, dev in enumerate(cfg.devices):
        await _start(
            system,
            tg,
            fat_cls(
                f"fat{i}",
                system.router,
                system.memory,
                device=dev.name,
                partition=dev.partition,
                read_only=dev.read_only,
                write_interval=cfg.cache.writeback_interval,
                held_pages=_held_metadata_pages(cfg, system),
            ),
        )
    vfs_cls = _import(FILE_DRIVER)
    if vfs_cls is None:
        system.missing.append("kernel file driver (servers.vfs.server)")
        return
    await _start(
        system,
        tg,
        vfs_cls(
            "vfs",
            system.router,
            system.memory,
            system.processes,
            filesystems=system.filesystems,
            mounts=mount_points(cfg.devices, system.filesystems),
        ),
    )


async def _stop_all(system: System) -> None:
    library = _import(FILE_LIBRARY)
    for proc in list(system.processes.by_pid.values()):
        if library is not None:
            await library(system, proc).exit()
        else:
            system.processes.destroy(proc)
    for server in reversed(system.servers):
        try:
            await server.stop()
        except Exception as exc:  # keep stopping the others; report the failure
            log.error("server failed to stop cleanly", server=server.name, exc_info=exc)
    system.servers.clear()
    system.stopped_at = time.perf_counter()


def run(main: Callable[[], Any], *, use_uvloop: bool = False) -> Any:
    """Run an async entry point on asyncio, optionally with uvloop (2-3 times faster loop)."""
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            log.warning("uvloop requested but not installed (pip install microkernel[fast])")
            use_uvloop = False
    return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})


__all__ = ["System", "boot", "parse_size", "run"]
