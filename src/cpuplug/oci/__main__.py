"""``python -m cpuplug.oci``: the ``cpuplug-runc`` command."""

import sys

from cpuplug.oci.cli import main

sys.exit(main())
