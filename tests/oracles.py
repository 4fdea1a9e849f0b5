"""External oracles (dosfstools, mtools): skip when missing, fail when CI requires them."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(*names: str) -> None:
    """Skip (or fail when MICROKERNEL_REQUIRE_ORACLES=1) unless every external oracle is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    reason = f"external oracle(s) not installed: {', '.join(missing)}"
    if os.environ.get("MICROKERNEL_REQUIRE_ORACLES") == "1":
        pytest.fail(reason + " (MICROKERNEL_REQUIRE_ORACLES=1)")
    pytest.skip(reason)
