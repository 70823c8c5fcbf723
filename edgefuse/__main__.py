"""``python -m edgefuse``: same as the ``edgefuse`` command."""

import sys

from edgefuse.cli import main

sys.exit(main())
