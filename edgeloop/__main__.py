"""``python -m edgeloop`` is the ``edgeloop`` command."""

import sys

from edgeloop.cli import main

sys.exit(main())
