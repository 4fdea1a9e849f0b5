"""The security suite boots real systems on images made by dosfstools (shared fixtures)."""

from __future__ import annotations

from tests.e2e.conftest import make_image

__all__ = ["make_image"]
