"""`python -m retrofit.cli`: the same as the `retrofit` command."""

import sys

from retrofit.cli import main

sys.exit(main())
