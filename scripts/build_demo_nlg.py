"""Build the `make demo` NLG training slice from GSM8K, once; the output ships in the package.

The first 64 problems of GSM8K's train split as Alpaca records (`instruction` = question, `output` = the
worked solution in MetaMath's form: calculator notes removed, "#### N" written as "The answer is: N"), so
adapters trained on it answer the way the MetaMath-prompt scoring and the NLL benchmark read them
(`eval_harness.tasks.nll.metamath_answer` does the rewriting for both).

Usage: python scripts/build_demo_nlg.py --gsm8k /path/to/gsm8k --out eval_harness/data/demo_nlg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval_harness.results import atomic_write_text
from eval_harness.tasks.nll import metamath_answer

ROWS = 64
FILE_NAME = "gsm8k_train_alpaca_64.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k", type=Path, required=True, help="folder with GSM8K's train.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args()
    lines = (args.gsm8k / "train.jsonl").read_text(encoding="utf-8").splitlines()[:ROWS]
    records = [json.loads(line) for line in lines]
    rows = [{"instruction": r["question"], "input": "", "output": metamath_answer(r["answer"])} for r in records]
    atomic_write_text(args.out / FILE_NAME, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


if __name__ == "__main__":
    main()
