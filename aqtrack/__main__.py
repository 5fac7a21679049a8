"""`python -m aqtrack` (and `torchrun -m aqtrack`) is the `aqtrack` command."""

import sys

from aqtrack.cli import main

sys.exit(main())
