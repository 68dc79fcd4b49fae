"""Build the `make demo` NLU task (QNLI format) from GSM8K, once; the output ships in the package.

QNLI asks whether a sentence answers a question. Here the question is the asking sentence of a GSM8K
problem (its last sentence, "How many ... ?") and the sentence is the last line of a worked solution,
which states the asked quantity ("He gets 79 questions right in total."). Each sampled problem gives two
rows: with its own final line (label `entailment`) and with another problem's (label `not_entailment`).
For half of the problems (drawn at random) that other problem is the one whose question is most similar
by TF-IDF (same topic and wording: hard); for the other half it is a random problem (easier). Every
question appears once with each label, so the question alone tells nothing. Both texts are short (about
30 tokens together), so a fine-tune of 100 steps fits the demo's time on two CPU cores; an earlier version
(the whole question with a random line of the solution, 64 tokens) stayed at chance in the steps it had.

Usage: python scripts/build_demo_pairs.py --gsm8k /work/shared/data/gsm8k --out eval_harness/data/demo_pairs
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors

from eval_harness.results import atomic_write_text

CALCULATOR = re.compile(r"<<[^>]*>>")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# split name -> (GSM8K file, number of problems; each gives 2 rows)
SPLITS = {"train": ("train.jsonl", 300), "dev": ("train.jsonl", 100), "test": ("test.jsonl", 150)}
HARD_FRACTION = 0.5  # share of negatives taken from the TF-IDF nearest neighbour
SEED = 0


def solution_steps(answer: str) -> list[str]:
    """The worked solution's lines, calculator annotations removed, final '#### N' line dropped."""
    lines = [CALCULATOR.sub("", line).strip() for line in answer.split("\n")]
    return [line for line in lines if line and not line.startswith("####")]


def asking_sentence(question: str) -> str:
    """The last sentence of a GSM8K question: the one that asks for the answer."""
    return SENTENCE_END.split(clean(question))[-1]


def clean(text: str) -> str:
    """One line of TSV: no tabs or newlines."""
    return " ".join(text.split())


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def nearest_other(problems: list[dict]) -> list[int]:
    """Index of each problem's most similar other problem (TF-IDF cosine on the questions)."""
    vectors = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit_transform(
        [problem["question"] for problem in problems])
    _, neighbours = NearestNeighbors(n_neighbors=2, metric="cosine").fit(vectors).kneighbors(vectors)
    return [int(row[1]) if int(row[0]) == index else int(row[0]) for index, row in enumerate(neighbours)]


def build_split(problems: list[dict], chosen: list[int], rng: random.Random) -> list[tuple[str, str, str]]:
    """Two rows (asking sentence with its own / another problem's final line) per problem, shuffled."""
    neighbour = nearest_other(problems)
    rows = []
    for index in chosen:
        question = asking_sentence(problems[index]["question"])
        own = solution_steps(problems[index]["answer"])[-1]
        if rng.random() < HARD_FRACTION:
            other_index = neighbour[index]
        else:
            other_index = rng.choice([other for other in range(len(problems)) if other != index])
        other = solution_steps(problems[other_index]["answer"])[-1]
        rows.append((question, clean(own), "entailment"))
        rows.append((question, clean(other), "not_entailment"))
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k", type=Path, required=True, help="folder with GSM8K train.jsonl and test.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="output folder (train.tsv, dev.tsv, test.tsv)")
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    pools = {name: load(args.gsm8k / name) for name in {file for file, _ in SPLITS.values()}}
    order = {name: rng.sample(range(len(pool)), len(pool)) for name, pool in pools.items()}
    taken = {name: 0 for name in pools}
    for split, (file, count) in SPLITS.items():
        chosen = order[file][taken[file]:taken[file] + count]  # train and dev draw disjoint problems
        taken[file] += count
        rows = build_split(pools[file], chosen, rng)
        lines = ["index\tquestion\tsentence\tlabel"]
        lines += [f"{index}\t{question}\t{sentence}\t{label}" for index, (question, sentence, label) in enumerate(rows)]
        atomic_write_text(args.out / f"{split}.tsv", "\n".join(lines) + "\n")
        print(f"{split}: {len(rows)} rows from {count} problems of GSM8K {file}")


if __name__ == "__main__":
    main()
