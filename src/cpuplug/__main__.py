"""``python -m cpuplug`` is the ``cpuplug`` command."""

import sys

from cpuplug.cli import main

sys.exit(main())
