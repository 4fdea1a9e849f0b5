"""Which file system serves a path: the mount table of the kernel file driver (pure)."""

from __future__ import annotations


class MountTable:
    """Which file system serves a path: the longest mounted prefix wins (case-insensitive).

    The first volume is mounted at ``/``; boot mounts each further device at
    ``/<device name>``, like a Unix mount shadowing a directory of that name.
    """

    def __init__(self, mounts: dict[str, str]) -> None:
        if "/" not in mounts:
            raise ValueError(f"no file system is mounted at / (mounts: {mounts})")
        self._mounts = sorted(
            ((normalise(point), fs) for point, fs in mounts.items()),
            key=lambda m: -len(m[0]),
        )

    def route(self, path: str) -> tuple[str, str]:
        """(file system, path within it) for an absolute path."""
        norm = normalise(path)
        for point, fs in self._mounts:
            if point == "/":
                return fs, path
            if norm == point or norm.startswith(point + "/"):
                depth = point.count("/")
                inner = "/".join(p for p in path.split("/") if p and p != ".")
                return fs, "/" + "/".join(inner.split("/")[depth:])
        raise AssertionError("unreachable: / is always mounted")

    def below(self, directory: str) -> list[tuple[str, str]]:
        """(name, file system) of the mount points directly inside ``directory``."""
        norm = normalise(directory).rstrip("/")
        out = []
        for point, fs in self._mounts:
            parent, _, name = point.rpartition("/")
            if point != "/" and parent == norm:
                out.append((name, fs))
        return out

    @property
    def root(self) -> str:
        """The file system mounted at ``/``."""
        return next(fs for point, fs in self._mounts if point == "/")

    def mounted_in_root(self, name: str) -> str | None:
        """The file system mounted at ``/<name>``, if any."""
        wanted = normalise(name)
        for point, fs in self._mounts:
            if point != "/" and point == wanted:
                return fs
        return None


def normalise(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts).lower()
