"""``python -m jquant ...``: see ``jquant.cli``."""

import sys

from jquant.cli import main

if __name__ == "__main__":
  sys.exit(main())
