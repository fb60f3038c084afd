"""`python -m bespoke_kohya.bundle`: go.sh's standard-library helper (see gohelper.py)."""

import sys

from .gohelper import main

sys.exit(main())
