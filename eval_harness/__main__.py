"""`python -m eval_harness ...` is `eval-harness ...`."""

import sys

from eval_harness.cli import main

if __name__ == "__main__":  # the vLLM backend spawns processes that re-import this module
    sys.exit(main())
