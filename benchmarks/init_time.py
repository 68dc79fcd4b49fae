"""Init time of NLoRA / SLoRA / PEFT LoRA / PiSSA on a stack of LLaMA-2-7B-shaped layers.

The same code as ``nlora init-bench`` (``nlora_plugin/bench.py``); every argument of that command works:

    python -m benchmarks.init_time [--blocks 4] [--r 128] [--methods ...] [--full-svd]
"""

import sys

from nlora_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main(["init-bench", *sys.argv[1:]]))
