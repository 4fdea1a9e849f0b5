"""Shared fixtures: the anyio backend is pinned to asyncio (the kernel uses memfd and asyncio futures)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
