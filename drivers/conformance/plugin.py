"""pytest plugin of the driver conformance kit: the ``--driver`` option and an anyio backend.

Registered as the ``pytest11`` entry point ``microkernel_driver_conformance``,
so it is loaded into every pytest run: it therefore imports only pytest and
adds two options and one fixture, nothing else. The tests themselves live in
:mod:`drivers.conformance.test_conformance`.
"""

from __future__ import annotations

import pytest

from drivers.conformance import DRIVER_OPTION, DRIVER_OPTIONS_OPTION


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("microkernel-driver", "microkernel block driver conformance")
    group.addoption(
        "--driver",
        action="append",
        dest=DRIVER_OPTION,
        default=None,
        metavar="NAME|module:Class",
        help="driver to run the conformance suite against (repeatable; default: all built-ins)",
    )
    group.addoption(
        "--driver-option",
        action="append",
        dest=DRIVER_OPTIONS_OPTION,
        default=None,
        metavar="KEY=VALUE",
        help="constructor option for --driver (repeatable; true/false/integers are converted)",
    )


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The kernel resolves replies with asyncio futures, so the suite runs on asyncio only.

    Module scope like anyio's own default, so module-scoped async fixtures of
    other projects keep working when this plugin is loaded everywhere.
    """
    return "asyncio"
