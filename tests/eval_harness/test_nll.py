"""NLL benchmark: the per-item score is the teacher-forced NLL of the answer tokens only, padding-invariant,
resumable, checked before any model loads, and the report gives it a CI and a paired test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from eval_harness.errors import ConfigError
from eval_harness.eval_yaml import load_config
from eval_harness.report import build_report
from eval_harness.results import ItemLog, read_json
from eval_harness.runner import run_config
from eval_harness.tasks import nll
from tests.eval_harness.conftest import GSM8K_SLICE, tiny_config, write_yaml

PAIRS = [
    {"prompt": "Question: what is two plus two?\nAnswer:", "answer": " four"},
    {"prompt": "Name a colour.", "answer": " The sky is blue and the grass is green."},
    {"prompt": "Count:", "answer": " one two three four five six seven eight nine ten"},
]


def write_pairs(folder: Path, records: list[dict], name: str = "pairs.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_gsm8k_solution_becomes_metamath_form():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert nll.metamath_answer(solution) == ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n"
                                             "The answer is: 72")
    item = nll.metamath_item(3, {"question": "How many?", "answer": solution})
    assert item.prompt.endswith("### Instruction:\nHow many?\n\n### Response:\n") and item.id == "3"
    alpaca = nll.metamath_item(0, {"instruction": "How many?", "input": "", "output": "It is 3.\nThe answer is: 3"})
    assert alpaca.prompt == item.prompt and alpaca.answer.endswith("The answer is: 3")
    with pytest.raises(KeyError):
        nll.metamath_item(0, {"instruction": "How many?", "input": "some context", "output": "3"})
    with pytest.raises(ValueError, match="####"):
        nll.metamath_answer("no final line")


def _dense_answer_nll(model, tokenizer, item: nll.Item) -> list[float]:
    """The reference: one unpadded sequence, NLL of every token after the prompt (eos included)."""
    prompt = tokenizer(item.prompt)["input_ids"]
    ids = prompt + tokenizer(item.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return [-float(log_probs[position - 1, ids[position]]) for position in range(len(prompt), len(ids))]


def test_scores_only_the_answer_tokens_and_padding_changes_nothing(tiny_root):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_root / "base")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_root / "base"))
    settings = nll.NllSettings(data=Path("unused"), format="pairs")
    items = [nll.Item(str(i), record["prompt"], record["answer"]) for i, record in enumerate(PAIRS)]
    encoded = [nll.encode(item, tokenizer, settings)[:2] for item in items]
    batched = nll.answer_nll(model, encoded, pad_id=tokenizer.pad_token_id)  # padded to the longest item
    for item, losses in zip(items, batched):
        assert losses == pytest.approx(_dense_answer_nll(model, tokenizer, item), abs=1e-4)
    # the prompt is context only: a different prompt changes the answer's score, not the count of its tokens
    other = nll.Item("x", "Something else entirely.", items[0].answer)
    other_losses = nll.answer_nll(model, [nll.encode(other, tokenizer, settings)[:2]], pad_id=0)[0]
    assert len(other_losses) == len(batched[0]) and other_losses != pytest.approx(batched[0], abs=1e-4)


def test_max_length_keeps_the_answers_first_tokens_and_says_so(tiny_root):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_root / "base"))
    item = nll.Item("0", PAIRS[2]["prompt"], PAIRS[2]["answer"])
    full, n_prompt, truncated = nll.encode(item, tokenizer, nll.NllSettings(data=Path("x")))
    assert not truncated
    short, _, truncated = nll.encode(item, tokenizer, nll.NllSettings(data=Path("x"), max_length=n_prompt + 2))
    assert truncated and short == full[: n_prompt + 2]
    with pytest.raises(ConfigError, match="max_length"):
        nll.encode(item, tokenizer, nll.NllSettings(data=Path("x"), max_length=n_prompt))


def test_run_report_ci_and_paired_test_and_resume(eval_dir, monkeypatch):
    write_pairs(eval_dir, [{"prompt": f"Item {i}: say something.", "answer": f" Answer number {i} is here."}
                           for i in range(12)])
    config = tiny_config(benchmarks={"nll": {"data": "pairs.jsonl", "format": "pairs", "batch_size": 5}})
    out = eval_dir / "run"
    run_config(load_config(write_yaml(eval_dir, config)), out, command=["test"])
    for label in ("base", "lora"):
        summary = read_json(out / label / "nll" / "summary.json")
        records = ItemLog(out / label / "nll" / "items.jsonl").records()
        assert len(records) == 12 and summary["primary_metric"] == "nll" and summary["lower_is_better"]
        assert summary["metrics"]["nll"] == pytest.approx(sum(r["score"] for r in records) / 12)
        tokens = sum(r["n_tokens"] for r in records)
        assert summary["metrics"]["perplexity"] == pytest.approx(
            math.exp(sum(r["scores"]["sum_nll"] for r in records) / tokens))
    base = [r["score"] for r in ItemLog(out / "base" / "nll" / "items.jsonl").records()]
    lora = [r["score"] for r in ItemLog(out / "lora" / "nll" / "items.jsonl").records()]
    assert base != pytest.approx(lora)  # the adapter changes the model

    results = read_json(build_report([out], eval_dir / "report", baseline="base") / "results.json")
    cell = results["table"]["LoRA"]["benchmarks"]["nll"]
    assert cell["ci_low"] < cell["estimate"] < cell["ci_high"]
    test = results["significance"]["nll"]["LoRA"]
    assert test["n_item_pairs"] == 12
    assert test["difference_estimate"] == pytest.approx(sum(lora) / 12 - sum(base) / 12)

    # resume: a finished item is not scored again (the model is never called for it)
    (out / "lora" / "nll" / "summary.json").unlink()
    kept = ItemLog(out / "lora" / "nll" / "items.jsonl").records()[:7]
    (out / "lora" / "nll" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    calls = []
    real = nll.answer_nll
    monkeypatch.setattr(nll, "answer_nll", lambda model, batch, **kw: calls.append(len(batch)) or real(model, batch, **kw))
    run_config(load_config(write_yaml(eval_dir, config)), out, command=["test"])
    assert sum(calls) == 5
    resumed = [r["score"] for r in ItemLog(out / "lora" / "nll" / "items.jsonl").records()]
    assert resumed == pytest.approx(lora, abs=1e-5)


def test_sample_generations_are_stored_with_the_first_items_and_shown_in_the_report(eval_dir):
    write_pairs(eval_dir, PAIRS)
    config = tiny_config(benchmarks={"nll": {"data": "pairs.jsonl", "format": "pairs", "generate": 2,
                                             "max_new_tokens": 6}})
    out = eval_dir / "run"
    run_config(load_config(write_yaml(eval_dir, config)), out, command=["test"])
    records = ItemLog(out / "lora" / "nll" / "items.jsonl").records()
    assert [("generation" in record) for record in records] == [True, True, False]
    assert records[0]["prompt"] == PAIRS[0]["prompt"] and records[1]["reference"] == PAIRS[1]["answer"]
    assert all(isinstance(record["generation"], str) for record in records[:2])
    report = build_report([out], eval_dir / "report", baseline="base")
    markdown = (report / "report.md").read_text()
    assert "## Sample generations (nll)" in markdown and "Name a colour." in markdown
    assert "nll: nll, lower is better" in markdown
    shown = read_json(report / "results.json")["generations"]["nll"]
    assert set(shown["rows"]) == {"base", "LoRA"} and list(shown["items"]) == ["0", "1"]
    assert shown["rows"]["LoRA"]["texts"]["0"] == records[0]["generation"]


def test_metamath_format_reads_gsm8k_records(eval_dir):
    settings = nll.parse_section({"data": str(GSM8K_SLICE), "limit": 2}, where="benchmarks.nll", base_dir=eval_dir)
    items = nll.read_items(settings)
    assert len(items) == 2 and all(item.answer.splitlines()[-1].startswith("The answer is: ") for item in items)
    assert nll.parse_section({}, where="benchmarks.nll", base_dir=eval_dir).data == nll.PACKAGED_GSM8K_TEST


@pytest.mark.parametrize(("section", "records", "message"), [
    ({"format": "pairs"}, None, r"benchmarks\.nll\.data: required"),
    ({"format": "pairs", "data": "pairs.jsonl"}, [{"question": "q", "reply": "a"}],
     r"line 1 lacks \['prompt', 'answer'\]; set prompt_field/answer_field"),
    ({"format": "pairs", "data": "pairs.jsonl", "answer_field": "reply"}, [{"prompt": "q", "reply": ""}],
     r"line 1: the answer field 'reply' is empty"),
    ({"data": "pairs.jsonl"}, [{"prompt": "q", "answer": "a"}], r"line 1: format 'metamath' needs the fields"),
    ({"data": "pairs.jsonl"}, [{"question": "q", "answer": "42"}], r"line 1: no '#### N'"),
    ({"data": "pairs.jsonl", "prompt_field": "p"}, [{"question": "q", "answer": "#### 1"}],
     r"prompt_field: only used with format: pairs"),
    ({"format": "pairs", "data": "pairs.jsonl", "add_eos": "yes"}, [{"prompt": "q", "answer": "a"}],
     r"add_eos: expected true or false, got 'yes'"),
    ({"format": "pairs", "data": "pairs.jsonl"}, [{"id": 1, "prompt": "q", "answer": "a"}] * 2, r"ids repeat"),
    ({"format": "gsm8k"}, None, r"format: expected one of metamath, pairs, got 'gsm8k'"),
    ({"format": "pairs", "data": "pairs.jsonl", "generate": 3}, [{"prompt": "q", "answer": "a"}],
     r"generate: 3 prompts to complete, but .* has only 1 items"),
    ({"format": "pairs", "data": "pairs.jsonl", "max_new_tokens": 8}, [{"prompt": "q", "answer": "a"}],
     r"max_new_tokens: only used with generate"),
])
def test_bad_sections_fail_at_config_time_naming_the_field(eval_dir, section, records, message):
    if records is not None:
        write_pairs(eval_dir, records)
    config = tiny_config(benchmarks={"nll": section})
    with pytest.raises(ConfigError, match=message):
        load_config(write_yaml(eval_dir, config))
