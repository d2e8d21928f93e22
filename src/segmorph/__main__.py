"""``python -m segmorph`` runs the command line."""

import sys

from segmorph.cli import main

sys.exit(main())
