"""python -m skyring.run: the same as the skyringrun command."""

import sys

from . import main

sys.exit(main())
