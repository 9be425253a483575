"""``python -m unimargin.cli ...`` (same as ``unimargin ...``)."""

import sys

from unimargin.cli import main

if __name__ == "__main__":
    sys.exit(main())
