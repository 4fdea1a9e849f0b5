"""Run the driver conformance suite over every built-in driver in the normal test run.

The suite lives in :mod:`drivers.conformance.test_conformance` so that anyone
can run it with ``--pyargs``; re-exporting its tests (and its
``pytest_generate_tests``) here makes ``pytest`` collect them from ``tests/``.
Without ``--driver`` the cases are the built-ins.
"""

from __future__ import annotations

from drivers.conformance.test_conformance import exported

globals().update(exported())
