"""Benchmark images, made with dosfstools and populated with mtools in a temporary directory.

The images come from the independent tools rather than ``microkernel.mkfs`` so
that the comparison with mtools and pyfatfs reads a volume none of the
contenders laid out, and so that the unaligned image is the ordinary
``mkfs.fat -a`` layout people really meet. File names are upper-case 8.3 names,
which every reader (including pyfatfs) resolves the same way.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from clients.benchmarks.harness import BenchSkipped, Settings

BIG = "/DATA.BIN"
HUGE = "/HUGE.BIN"  # the big cold read's file, on an image of its own
TINY = "/ONE.BIN"
SMALL_DIR = "/SMALL"

# 4 KiB clusters, data region aligned by mkfs.fat's default: the zero-copy case.
ALIGNED_ARGS = ("-F", "32", "-S", "512", "-s", "8")
# Same clusters, but no alignment and 33 reserved sectors: the data region starts
# on an odd sector, so no file page is one whole cache page (the copy path).
UNALIGNED_ARGS = ("-F", "32", "-S", "512", "-s", "8", "-a", "-R", "33")


def tool_env() -> dict[str, str]:
    """mtools refuses plain image files without this (no real drive geometry)."""
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise BenchSkipped(f"needs {', '.join(missing)} (apt-get install dosfstools mtools)")


PAYLOAD_CHUNK = 64 * 2**20  # randbytes of 256 MiB overflows getrandbits' C int bit count


def payload(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes, so every run reads the same data."""
    rng = random.Random(seed)
    if size <= PAYLOAD_CHUNK:
        return rng.randbytes(size)
    return b"".join(
        rng.randbytes(min(PAYLOAD_CHUNK, size - at)) for at in range(0, size, PAYLOAD_CHUNK)
    )


def run_tool(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, env=tool_env(), check=False, timeout=300)
    if done.returncode != 0:
        msg = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {msg}")


@dataclass
class Image:
    """An image file and the expected content of the files put on it."""

    path: Path
    files: dict[str, bytes] = field(default_factory=dict)

    def put(self, name: str, data: bytes, staging: Path) -> None:
        """Copy ``data`` to ``name`` (``/DIR/FILE``) with mcopy, creating the directory."""
        local = staging / f"payload-{len(self.files)}"
        local.write_bytes(data)
        parent = name.rsplit("/", 1)[0]
        if parent and not any(f.startswith(parent + "/") for f in self.files):
            run_tool("mmd", "-i", str(self.path), f"::{parent}")
        run_tool("mcopy", "-i", str(self.path), str(local), f"::{name}")
        local.unlink()
        self.files[name] = data


class Workspace:
    """The temporary directory of one bench run; images are made once, when first needed."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self._images: dict[str, Image] = {}

    def _make(self, label: str, mkfs_args: tuple[str, ...]) -> Image:
        require_tools("mkfs.fat", "mcopy", "mmd")
        path = self.root / f"{label}.img"
        run_tool("mkfs.fat", "-C", *mkfs_args, str(path), str(self.settings.image_kib))
        return Image(path)

    def aligned(self) -> Image:
        """FAT32, 4 KiB clusters, aligned: the big file, the 1 MiB file, the small files."""
        if "aligned" not in self._images:
            image = self._make("aligned", ALIGNED_ARGS)
            image.put(BIG, payload(self.settings.file_size, 1), self.root)
            image.put(TINY, payload(self.settings.tiny_file_size, 2), self.root)
            for i in range(self.settings.small_files):
                image.put(small_name(i), payload(1024 + 97 * i, 100 + i), self.root)
            self._images["aligned"] = image
        return self._images["aligned"]

    def unaligned(self) -> Image:
        """The same big file on a volume whose data region is not 4 KiB aligned."""
        if "unaligned" not in self._images:
            image = self._make("unaligned", UNALIGNED_ARGS)
            image.put(BIG, payload(self.settings.file_size, 1), self.root)
            self._images["unaligned"] = image
        return self._images["unaligned"]

    def huge(self) -> Image:
        """FAT32 like :meth:`aligned`, large enough for one ``big_file_size`` file."""
        if "huge" not in self._images:
            require_tools("mkfs.fat", "mcopy", "mmd")
            path = self.root / "huge.img"
            kib = max(self.settings.image_kib, self.settings.big_file_size // 1024 + 65_536)
            run_tool("mkfs.fat", "-C", *ALIGNED_ARGS, str(path), str(kib))
            image = Image(path)
            image.put(HUGE, payload(self.settings.big_file_size, 3), self.root)
            self._images["huge"] = image
        return self._images["huge"]

    def scratch(self, name: str) -> Path:
        """A path in the workspace for a throwaway file (a trace, say)."""
        return self.root / name


def small_name(i: int) -> str:
    return f"{SMALL_DIR}/F{i:04d}.BIN"
