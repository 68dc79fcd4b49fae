"""GSM8K and MATH through lm-eval: answers are extracted and scored by lm-eval's filters and metrics.

An oracle LM (answers right on even items, wrong on odd ones) goes through the real lm-eval
pipeline with the shipped task YAMLs, so the expected score is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from lm_eval.api.model import LM

from eval_harness.config import GenerationDefaults
from eval_harness.eval_yaml import load_config
from eval_harness.results import ItemLog, read_json
from eval_harness.tasks.gsm8k_math import GSM8K, MATH, PACKAGED_GSM8K_TEST
from tests.eval_harness.conftest import GSM8K_SLICE, MATH_FIXTURE, tiny_config, write_yaml

GSM8K_ITEMS = [json.loads(line) for line in GSM8K_SLICE.read_text().splitlines()]
MATH_ITEMS = [json.loads(line) for line in MATH_FIXTURE.read_text().splitlines()]
MATH_ANSWERS = ["5", "\\frac{3}{4}", "5", "7", "6", "\\frac{1}{2}"]


class OracleLM(LM):
    """Answers item i (found by its question in the prompt) with `answer(i)`; records the prompts."""

    def __init__(self, questions: list[str], answer) -> None:
        super().__init__()
        self.questions = questions
        self.answer = answer
        self.prompts: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in requests:
            context = request.args[0]
            self.prompts.append(context)
            # The last question in the prompt is the item's own (few-shot examples come first).
            index = max(range(len(self.questions)), key=lambda i: context.rfind(self.questions[i]))
            outputs.append(self.answer(index))
        return outputs

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def _gold_gsm8k(index: int) -> str:
    return GSM8K_ITEMS[index]["answer"].split("####")[-1].strip()


def _run_with_oracle(monkeypatch, tmp_path, benchmark, settings, oracle) -> dict:
    from lm_eval.models import huggingface

    monkeypatch.setattr(huggingface, "HFLM", lambda **kwargs: oracle)
    handle = SimpleNamespace(label="oracle", method="Oracle", seed=1, model=None, tokenizer=None,
                             trainable_params=123, base_model="models/tiny", generation=GenerationDefaults(batch_size=2, max_new_tokens=32))
    out_dir = tmp_path / "oracle" / benchmark.key
    out_dir.mkdir(parents=True)
    return benchmark.run(settings, model=handle, out_dir=out_dir)


def _check_files(tmp_path: Path, benchmark: str, summary: dict, expected_scores: list[float]) -> list[dict]:
    out_dir = tmp_path / "oracle" / benchmark
    items = ItemLog(out_dir / "items.jsonl").records()
    assert [item["id"] for item in items] == [str(i) for i in range(len(expected_scores))]
    assert [item["score"] for item in items] == expected_scores
    assert summary == read_json(out_dir / "summary.json")
    assert summary["metrics"]["exact_match"] == pytest.approx(sum(expected_scores) / len(expected_scores))
    assert summary["n_items"] == len(expected_scores) and summary["metric_kind"] == "mean"
    assert summary["trainable_params"] == 123 and summary["method"] == "Oracle" and summary["seed"] == 1
    lm_eval_results = read_json(out_dir / "lm_eval_results.json")
    task = summary["extra"]["lm_eval_task"]
    assert lm_eval_results["results"][task]["exact_match," + ("strict-match" if benchmark == "gsm8k" else
                                          ("answer-is" if summary["extra"]["prompt"] == "metamath" else "none"))] \
        == summary["metrics"]["exact_match"]
    return items


def test_gsm8k_metamath_reads_the_answer_after_the_answer_is(monkeypatch, tmp_path):
    settings = GSM8K.parse_section({"data": str(GSM8K_SLICE), "limit": 6}, where="benchmarks.gsm8k",
                                   base_dir=tmp_path)

    def answer(i: int) -> str:
        gold = _gold_gsm8k(i)
        # even: right ("18."); odd: the right number appears, but not as the stated answer
        return f"Step: 2 + {gold} is wrong.\nThe answer is: {gold}." if i % 2 == 0 else f"{gold}? The answer is: -1"

    oracle = OracleLM([item["question"] for item in GSM8K_ITEMS], answer)
    summary = _run_with_oracle(monkeypatch, tmp_path, GSM8K, settings, oracle)
    items = _check_files(tmp_path, "gsm8k", summary, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    assert items[0]["extracted"]["strict-match"] == f"{_gold_gsm8k(0)}."
    assert summary["metrics"]["exact_match_flexible"] == pytest.approx(3 / 6)  # last number: "." or "-1"
    assert oracle.prompts[0].startswith("Below is an instruction that describes a task.")
    assert oracle.prompts[0].endswith("### Response: Let's think step by step.")


def test_gsm8k_lm_eval_prompt_is_five_shot_with_hash_answers(monkeypatch, tmp_path):
    settings = GSM8K.parse_section(
        {"data": str(GSM8K_SLICE), "prompt": "lm_eval", "fewshot_data": str(PACKAGED_GSM8K_TEST), "limit": 4},
        where="benchmarks.gsm8k", base_dir=tmp_path,
    )
    oracle = OracleLM([item["question"] for item in GSM8K_ITEMS],
                      lambda i: f"so #### {_gold_gsm8k(i)}" if i < 3 else "The answer is 3")
    summary = _run_with_oracle(monkeypatch, tmp_path, GSM8K, settings, oracle)
    _check_files(tmp_path, "gsm8k", summary, [1.0, 1.0, 1.0, 0.0])
    assert oracle.prompts[0].count("Question:") == 6  # 5 examples + the item
    assert summary["extra"]["num_fewshot"] == 5


@pytest.mark.parametrize("prompt", ["metamath", "lm_eval"])
def test_math_answers_compared_by_lm_evals_is_equiv(monkeypatch, tmp_path, prompt):
    settings = MATH.parse_section({"data": str(MATH_FIXTURE), "prompt": prompt}, where="benchmarks.math",
                                  base_dir=tmp_path)
    wrong = {1: "\\frac{4}{3}", 4: "3!"}

    def answer(i: int) -> str:
        value = wrong.get(i, MATH_ANSWERS[i])
        # "0.75"-style variants are not equivalent under hendrycks normalisation; "\\dfrac" is
        return f"Work.\nThe answer is: {value.replace('frac', 'dfrac')}" if prompt == "metamath" else f"${value}$"

    oracle = OracleLM([item["problem"] for item in MATH_ITEMS], answer)
    summary = _run_with_oracle(monkeypatch, tmp_path, MATH, settings, oracle)
    _check_files(tmp_path, "math", summary, [1.0, 0.0, 1.0, 1.0, 0.0, 1.0])


def test_tiny_model_end_to_end_with_lora_and_nlora(eval_dir):
    """The real CLI path: base + LoRA + NLoRA adapters, GSM8K slice and MATH fixture, contract files."""
    from eval_harness.cli import main

    config = tiny_config(
        models=[{"label": "base"}, {"label": "lora", "adapter": "lora"}, {"label": "nlora", "adapter": "nlora"}],
        benchmarks={"gsm8k": {"data": "gsm8k.jsonl", "limit": 5}, "math": {"data": "math.jsonl"}},
    )
    path = write_yaml(eval_dir, config)
    assert main(["run", str(path), "--output", str(eval_dir / "run")]) == 0
    run = eval_dir / "run"
    run_json = read_json(run / "run.json")
    assert run_json["config"] == load_config(path).as_dict()
    assert run_json["versions"]["lm_eval"] and run_json["command"][:2] == ["eval-harness", "run"]
    responses = {}
    for label, method in [("base", "base"), ("lora", "LoRA"), ("nlora", "NLoRA")]:
        for benchmark, count in [("gsm8k", 5), ("math", 6)]:
            summary = read_json(run / label / benchmark / "summary.json")
            items = ItemLog(run / label / benchmark / "items.jsonl").records()
            assert len(items) == summary["n_items"] == count
            assert summary["method"] == method and summary["benchmark"] == benchmark
            assert (summary["trainable_params"] is None) == (label == "base")
            assert summary["metrics"]["exact_match"] == pytest.approx(sum(i["score"] for i in items) / count)
            assert (run / label / benchmark / "lm_eval_results.json").is_file()
            responses[label, benchmark] = [item["response"] for item in items]
    assert responses["base", "gsm8k"] != responses["lora", "gsm8k"]  # the adapters are applied
    assert responses["base", "gsm8k"] != responses["nlora", "gsm8k"]
