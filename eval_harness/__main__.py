"""`python -m eval_harness ...` is `eval-harness ...`."""

import sys

from eval_harness.cli import main

sys.exit(main())
