"""``python -m segmorph`` runs the command line."""

import sys

from segmorph.cli.main import main

sys.exit(main())
