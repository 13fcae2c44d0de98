"""``python -m taskmill``: the same command line as the ``taskmill`` script."""

import sys

from taskmill.cli import main

sys.exit(main())
