"""Finding a driver class from a spec: a built-in name, ``module:Class``, or an entry point.

An installed package adds a driver by declaring an entry point in the group
``microkernel.drivers`` (``name = "package.module:Class"``); the boot
configuration and ``--driver`` then accept that name. Built-ins are imported
lazily so that resolving one name does not import every controller model.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from drivers.base import BlockDriver
from drivers.errors import UnknownDriver

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "microkernel.drivers"

BUILTIN: dict[str, str] = {
    "nvme": "drivers.nvme:NvmeDriver",
    "ahci": "drivers.ahci:AhciDriver",
    "ahci32": "drivers.ahci:Ahci32Driver",
    "ide": "drivers.ide:IdeDriver",
    "ide-dma": "drivers.ide:IdeDmaDriver",
    "ide-pio": "drivers.ide:IdePioDriver",
    "ramdisk": "drivers.ramdisk:RamDisk",
}


def entry_points(group: str) -> Iterable[EntryPoint]:
    """``importlib.metadata.entry_points``, imported on first use: ~20 ms that a
    command naming a built-in driver never pays."""
    from importlib import metadata

    return metadata.entry_points(group=group)


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_drivers() -> list[str]:
    """Every name ``load_driver`` accepts (built-ins first, then installed plugins)."""
    return [*BUILTIN, *sorted(set(_plugins()) - set(BUILTIN))]


def load_driver(spec: str) -> type[BlockDriver]:
    """The driver class for ``spec``; ``UnknownDriver`` (ENODEV) says what is available."""
    if spec in BUILTIN:
        return _import_class(BUILTIN[spec], spec)
    if ":" in spec:
        return _import_class(spec, spec)
    plugin = _plugins().get(spec)
    if plugin is not None:
        return _checked(_load_entry_point(plugin), spec)
    raise UnknownDriver(
        f"no driver named {spec!r}; available: {', '.join(available_drivers())} "
        "(or give package.module:Class)"
    )


def _import_class(target: str, spec: str) -> type[BlockDriver]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownDriver(f"driver {spec!r}: cannot import {module_name}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UnknownDriver(f"driver {spec!r}: {module_name} has no attribute {attr!r}") from None
    return _checked(obj, spec)


def _load_entry_point(plugin: EntryPoint) -> object:
    try:
        return plugin.load()
    except (ImportError, AttributeError) as exc:
        raise UnknownDriver(
            f"driver plugin {plugin.name!r} ({plugin.value}) failed: {exc}"
        ) from exc


def _checked(obj: object, spec: str) -> type[BlockDriver]:
    if isinstance(obj, type) and issubclass(obj, BlockDriver):
        return obj
    raise UnknownDriver(f"driver {spec!r} resolves to {obj!r}, which is not a BlockDriver subclass")
