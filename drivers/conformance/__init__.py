"""Driver conformance kit: proves that a block driver speaks :mod:`drivers.protocol`.

Run it against any driver class::

    pytest -p drivers.conformance.plugin --pyargs drivers.conformance --driver=mypkg.mod:MyDriver

(``-p`` is unnecessary once the ``pytest11`` entry point registers the plugin.)
Without ``--driver`` it runs every built-in driver at logical sector sizes 512
and 4096. ``--driver-option KEY=VALUE`` passes constructor options.

This package's ``__init__`` imports nothing, so loading the pytest plugin is
free for test runs that never ask for it.
"""

DRIVER_OPTION = "conformance_drivers"
DRIVER_OPTIONS_OPTION = "conformance_driver_options"
