"""``python -m prozchain_discovery`` — the same as the ``prozchain-discovery`` command."""

import sys

from .cli import main

sys.exit(main())
