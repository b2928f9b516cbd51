"""`python -m recgen ...`: the same command line as `recgen ...`."""

import sys

from recgen.cli import main

sys.exit(main())
