"""``python -m absnet`` runs the ``absc`` command line."""

import sys

from absnet.cli import main

sys.exit(main())
