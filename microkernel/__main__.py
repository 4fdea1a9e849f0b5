"""``python -m microkernel``."""

from microkernel.cli import main

raise SystemExit(main())
