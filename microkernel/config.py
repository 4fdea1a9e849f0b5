"""Boot configuration: keyword arguments or a TOML file, decoded with msgspec.

Example ``system.toml``::

    memory = "256M"
    low_memory = "64M"
    uvloop = false
    populate_memory = true          # fault RAM in on a background thread at boot
    process_memory = "16M"          # private frames per process (default: memory / 4)

    [trace]
    path = "trace.jsonl"

    [cache]
    pages = 16384
    writeback_interval = 1.0
    low_share = 0.5                 # at most half the low (DMA32) zone is the cache's

    [[devices]]
    name = "nvme0"
    driver = "nvme"                 # or "package.module:Class"
    image = "disk.img"
    physical_sector_size = 4096
    partition = 0                   # 0 = whole disk, N = MBR partition N

    [capabilities]                  # replaces the whole default table (docs/isolation.md)
    kernel = ["*"]                  # a list: every message type to these receivers
    [capabilities."proc:*"]         # a table: receiver -> message types
    vfs = ["Open", "Close", "CachePart", "Stat"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import msgspec

from microkernel.units import parse_size


def message_types(union: Any) -> list[str]:
    """The wire names (tags) of a protocol union's members, in declaration order."""
    members = get_args(union) or (union,)
    return [str(member.__struct_config__.tag) for member in members]


def default_capabilities(
    devices: list[str], filesystems: list[str]
) -> dict[str, dict[str, list[str]]]:
    """Who may send which message types to whom (docs/architecture.md §3), from the protocol modules.

    Processes send only system calls to the kernel file driver; only the cache
    sends cache notifications (``SectorsReady``, ``CacheFailed``, ``GiveBack``);
    file-system requests come only from the kernel file driver; cache requests
    from it and the file systems (``GiveBackDone`` only from the page holder);
    driver commands only from the cache (a file system may ``Identify``); the
    kernel (tests, tools) may send anything. Replies need no capability.
    """
    from drivers.protocol import BlockRequest, Identify
    from servers.cache.protocol import CacheNotification, CacheRequest, GiveBackDone
    from servers.fs.protocol import FsRequest
    from servers.vfs.protocol import Syscall

    cache_requests = message_types(CacheRequest)
    fs_cache_requests = [t for t in cache_requests if t not in message_types(GiveBackDone)]
    driver_commands = [t for t in message_types(BlockRequest) if t in _DRIVER_COMMANDS]
    return {
        "proc:*": {"vfs": message_types(Syscall)},
        "vfs": {"cache": cache_requests, **{fs: message_types(FsRequest) for fs in filesystems}},
        **{
            fs: {"cache": fs_cache_requests, **{d: message_types(Identify) for d in devices}}
            for fs in filesystems
        },
        "cache": {"vfs": message_types(CacheNotification), **{d: driver_commands for d in devices}},
        "kernel": {"*": ["*"]},
    }


#: What the cache sends a driver; fault injection and statistics are the kernel's alone.
_DRIVER_COMMANDS = ("Identify", "Read", "Write", "Flush")


class ConfigError(ValueError):
    """The configuration is invalid; the message says which field and why."""


class DeviceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image: str
    name: str = ""
    driver: str = "nvme"
    logical_sector_size: int = 512
    physical_sector_size: int = 4096
    alignment_offset: int = 0
    partition: int = 0
    read_only: bool = False
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class TraceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str | None = None
    level: str = "warning"


class CacheConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pages: int = 0  # 0: half of memory
    writeback_interval: float | None = 1.0
    low_water: float = 0.05
    high_water: float = 0.15
    io_timeout: float | None = 30.0  # a driver command not answered by then fails with EIO
    low_share: float = 0.5  # at most this share of the low (DMA32) zone is the cache's


class SystemConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    memory: int | str = "256M"
    low_memory: int | str | None = None
    uvloop: bool = False
    devices: list[DeviceConfig] = msgspec.field(default_factory=list)
    trace: TraceConfig = msgspec.field(default_factory=TraceConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    # None: default_capabilities(). Per sender pattern either receiver patterns (any
    # message type) or {receiver pattern: [message type patterns]}.
    capabilities: dict[str, list[str] | dict[str, list[str]]] | None = None
    # Private frames (the copy path's pages) one process may hold; None: a quarter of memory.
    process_memory: int | str | None = None
    # Fault RAM in on a background thread at boot: first DMA into a page the host has
    # not allocated yet costs 5-7x more. Off saves the host memory of an idle system.
    populate_memory: bool = True

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def process_quota_frames(self) -> int:
        """The per-process frame quota (exceeding it is ENOMEM for that process alone)."""
        size = self.memory_bytes // 4 if self.process_memory is None else parse_size(
            self.process_memory
        )
        return size // 4096

    @property
    def low_memory_bytes(self) -> int | None:
        return None if self.low_memory is None else parse_size(self.low_memory)


def load_config(path: str | Path) -> SystemConfig:
    """Decode and validate a TOML configuration file; relative image paths follow the file."""
    p = Path(path)
    try:
        cfg = msgspec.toml.decode(p.read_bytes(), type=SystemConfig)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} does not exist") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    for dev in cfg.devices:
        if not Path(dev.image).is_absolute():
            dev.image = str(p.parent / dev.image)
    return validate(cfg)


def validate(cfg: SystemConfig) -> SystemConfig:
    try:
        mem = cfg.memory_bytes
        low = cfg.low_memory_bytes
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if mem < 1 << 20:
        raise ConfigError(f"memory {mem} is below the 1 MiB minimum")
    if low is not None and low > mem:
        raise ConfigError(f"low_memory {low} exceeds memory {mem}")
    if not 0.0 <= cfg.cache.low_share <= 1.0:
        raise ConfigError(f"cache.low_share {cfg.cache.low_share} is not within 0..1")
    try:
        if cfg.process_quota_frames < 1:
            raise ConfigError(f"process_memory {cfg.process_memory} is less than one frame")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    names = set()
    for i, dev in enumerate(cfg.devices):
        if not dev.name:
            base = dev.driver.rsplit(":", 1)[-1].split("-")[0].lower()
            dev.name = f"{base}{i}"
        if dev.name in names:
            raise ConfigError(f"two devices are named {dev.name!r}")
        names.add(dev.name)
        if dev.logical_sector_size not in (512, 4096):
            raise ConfigError(f"{dev.name}: logical_sector_size must be 512 or 4096")
        if dev.physical_sector_size not in (512, 4096) or (
            dev.physical_sector_size < dev.logical_sector_size
        ):
            raise ConfigError(
                f"{dev.name}: physical_sector_size must be 512 or 4096 and >= logical"
            )
    return cfg
