"""Driver lookup by built-in name, ``module:Class`` and entry point, with typed errors."""

from __future__ import annotations

import errno
from importlib.metadata import EntryPoint

import pytest

from drivers import registry
from drivers.ahci import Ahci32Driver, AhciDriver
from drivers.errors import UnknownDriver
from drivers.ide import IdePioDriver
from drivers.nvme import NvmeDriver
from drivers.ramdisk import RamDisk


def test_builtin_names() -> None:
    assert registry.load_driver("nvme") is NvmeDriver
    assert registry.load_driver("ahci") is AhciDriver
    assert registry.load_driver("ahci32") is Ahci32Driver
    assert registry.load_driver("ide-pio") is IdePioDriver
    assert registry.load_driver("ramdisk") is RamDisk


def test_module_colon_class() -> None:
    assert registry.load_driver("drivers.ramdisk:RamDisk") is RamDisk


@pytest.mark.parametrize(
    "spec", ["floppy", "drivers.nope:X", "drivers.nvme:Nope", "drivers.nvme:struct"]
)
def test_unknown_specs_are_typed_errors(spec: str) -> None:
    with pytest.raises(UnknownDriver) as info:
        registry.load_driver(spec)
    assert info.value.errno == errno.ENODEV


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(UnknownDriver, match="nvme, ahci"):
        registry.load_driver("floppy")


def test_entry_point_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint("mydisk", "drivers.ramdisk:RamDisk", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [plugin])
    assert registry.load_driver("mydisk") is RamDisk
    assert "mydisk" in registry.available_drivers()
