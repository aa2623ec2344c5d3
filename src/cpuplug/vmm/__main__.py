"""``python -m cpuplug.vmm ARGS`` is ``cpuplug vmm ARGS``."""

import sys

from cpuplug.cli import main

sys.exit(main(["vmm", *sys.argv[1:]]))
