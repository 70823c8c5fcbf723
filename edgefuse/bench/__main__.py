"""``python -m edgefuse.bench transport ...``: the same as ``edgefuse bench transport ...``."""

import sys

from edgefuse.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
