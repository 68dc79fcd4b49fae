"""Batched generation: left padding changes nothing, stop strings cut, sampling is seeded."""

from __future__ import annotations

import pytest

from eval_harness.generation import HFGenerator, cut_at_stop
from eval_harness.models import ModelHandle

PROMPTS = [
    "Question: what is two plus two?",
    "a much longer prompt about ducks that lay sixteen eggs per day and the farmers market",
    "hi",
]


@pytest.fixture(scope="module")
def handle(tiny_root) -> ModelHandle:
    return ModelHandle(label="base", method="base", seed=None, base_model=tiny_root / "base", adapter=None,
                       dtype="float32", device="cpu")


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("abc Question: x Answer: y", ["Answer:", "Question:"]) == "abc "
    assert cut_at_stop("no stop here", ["Question:", ""]) == "no stop here"


def test_batched_greedy_equals_one_prompt_at_a_time(handle):
    batched = HFGenerator(handle.model, handle.tokenizer, batch_size=3)
    single = HFGenerator(handle.model, handle.tokenizer, batch_size=1)
    together = batched.generate(PROMPTS, max_new_tokens=8)
    alone = single.generate(PROMPTS, max_new_tokens=8)
    assert together == alone
    assert [len(samples) for samples in together] == [1, 1, 1]
    assert len({samples[0] for samples in together}) == 3  # each prompt got its own completion back


def test_stop_string_cuts_the_completion(handle):
    generator = handle.generator
    full = generator.generate(PROMPTS[:1], max_new_tokens=10)[0][0]
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    cut = generator.generate(PROMPTS[:1], max_new_tokens=10, stop=[stop])[0][0]
    assert cut == full[: full.find(stop)]
    assert stop not in cut


def test_sampling_is_seeded_and_returns_num_samples(handle):
    generator = handle.generator
    first = generator.generate(PROMPTS, max_new_tokens=6, temperature=1.0, num_samples=3, seed=7)
    again = generator.generate(PROMPTS, max_new_tokens=6, temperature=1.0, num_samples=3, seed=7)
    other = generator.generate(PROMPTS, max_new_tokens=6, temperature=1.0, num_samples=3, seed=8)
    assert first == again
    assert first != other
    assert [len(samples) for samples in first] == [3, 3, 3]
    with pytest.raises(ValueError, match="temperature > 0"):
        generator.generate(PROMPTS, max_new_tokens=2, num_samples=2)
