"""``IMAGE::/path`` locations on the command line (see README.md), like mtools' ``::``.

Pure parsing, no I/O: the shell commands and their tests share one rule for
telling an image path from a host path and for normalising the path inside
the volume (FAT names cannot contain ``:``, so the *last* ``::`` separates).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

SEPARATOR = "::"
WILDCARDS = "*?["  # shell-style patterns inside IMG:: paths (quoted, as mtools takes them)


@dataclass(frozen=True, slots=True)
class ImagePath:
    """A path inside the FAT volume of an image file."""

    image: str
    path: str
    trailing_slash: bool = False  # written ``IMG::/dir/``: it must be a directory

    def __str__(self) -> str:
        return f"{self.image}{SEPARATOR}{self.path}{'/' if self.trailing_slash else ''}"

    def child(self, name: str) -> ImagePath:
        return ImagePath(self.image, posixpath.join(self.path, name))

    def at(self, path: str) -> ImagePath:
        """Another path in the same image."""
        return ImagePath(self.image, normalise(path))

    @property
    def has_wildcards(self) -> bool:
        return any(ch in self.path for ch in WILDCARDS)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def normalise(path: str) -> str:
    """An absolute volume path without ``.``, ``..``, repeated or trailing slashes."""
    clean = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + clean.lstrip("/")


def parse(arg: str) -> ImagePath | None:
    """The image location written in ``arg``, or None when ``arg`` is a host path."""
    image, sep, path = arg.rpartition(SEPARATOR)
    if not sep or not image:
        return None
    clean = normalise(path)
    return ImagePath(image, clean, trailing_slash=path.endswith("/") and clean != "/")


__all__ = ["SEPARATOR", "WILDCARDS", "ImagePath", "normalise", "parse"]
