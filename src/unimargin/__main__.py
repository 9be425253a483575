"""``python -m unimargin ...`` is the ``unimargin`` command."""

import sys

from unimargin.cli import main

if __name__ == "__main__":
    sys.exit(main())
