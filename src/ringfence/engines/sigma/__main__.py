"""`python -m ringfence.engines.sigma check PATH...`: see `_report.py`."""

import sys

from ringfence.engines.sigma._report import main

sys.exit(main(sys.argv[1:]))
