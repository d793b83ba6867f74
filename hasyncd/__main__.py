"""``python -m hasyncd``: the same as the ``hasyncd`` command."""

import sys

from hasyncd.cli import main

sys.exit(main())
