"""python -m rotelab: the same command line as `rotelab`."""

import sys

from .cli import main

sys.exit(main())
