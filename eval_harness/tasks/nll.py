"""Teacher-forced negative log-likelihood (and perplexity) of reference answers, per item.

For every item the model reads ``prompt + answer`` once; the item's score is the mean NLL (nats) of the
answer's tokens given the prompt and the answer's earlier tokens (the prompt's own tokens are not scored).
Lower is better. It needs no generation, so it is cheap and it separates models long before a small model
solves any problem: the measure PEFT's method_comparison uses for forgetting.

Two data formats, behind `format:`
- `metamath` (default): GSM8K-style JSONL (`question`, `answer` ending "#### N"), MetaMathQA-style
  (`query`, `response`) or Alpaca records without input (`instruction`, `output`: a training file itself). The prompt is the zero-shot Alpaca prompt MetaMath trains on (Axolotl's
  ``type: alpaca`` writes the same text); a GSM8K solution is scored in MetaMath's form: calculator notes
  ``<<...>>`` removed and the final "#### N" written as "The answer is: N".
- `pairs`: any JSONL of prompt/answer pairs, used verbatim (`prompt_field`, `answer_field`).

`generate: K` also writes a greedy completion of the first K prompts into their items (a sanity check the
report shows beside the scores; `max_new_tokens` defaults to the YAML's `generation.max_new_tokens`).

The answer is tokenized apart from the prompt and followed by the end-of-sequence token (`add_eos`), as
Axolotl builds its training examples, so a model that learnt to stop is credited for it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval_harness.errors import ConfigError
from eval_harness.fields import check_fields, dataclass_defaults, get_bool, get_choice, get_int, get_path
from eval_harness.jsonl import read_jsonl
from eval_harness.results import ItemLog
from eval_harness.summary import Summary
from eval_harness.tasks.base import Benchmark

if TYPE_CHECKING:
    import torch

    from eval_harness.models import ModelHandle

PACKAGED_GSM8K_TEST = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "test.jsonl"
FORMATS = ("metamath", "pairs")
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{question}\n\n### Response:\n"
)
CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
FINAL_ANSWER = re.compile(r"\n?#### *(.+?)\s*$", re.DOTALL)
FIELDS = ("data", "format", "prompt_field", "answer_field", "limit", "batch_size", "max_length", "add_eos",
          "generate", "max_new_tokens")


@dataclass(frozen=True)
class NllSettings:
    """A validated `benchmarks.nll` section."""

    data: Path
    format: str = "metamath"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    limit: int | None = None
    batch_size: int | None = None  # None: the YAML's generation.batch_size
    max_length: int = 1024  # prompt + answer tokens; longer items keep the answer's first tokens
    add_eos: bool = True
    generate: int = 0  # greedy completions of the first `generate` prompts, stored in their items
    max_new_tokens: int | None = None  # None: the YAML's generation.max_new_tokens


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    answer: str


def metamath_answer(solution: str) -> str:
    """A GSM8K solution in MetaMath's form: no calculator notes, "The answer is: N" for "#### N"."""
    match = FINAL_ANSWER.search(solution)
    if match is None:
        raise ValueError(f"no '#### N' final answer in {solution[-80:]!r}")
    body = CALCULATOR_NOTE.sub("", solution[: match.start()]).rstrip()
    return f"{body}\nThe answer is: {match.group(1).strip()}"


def metamath_item(index: int, record: Mapping[str, Any]) -> Item:
    """An Item from a GSM8K (`question`/`answer`), MetaMathQA (`query`/`response`) or Alpaca record."""
    if "question" in record and "answer" in record:
        question, answer = str(record["question"]), metamath_answer(str(record["answer"]))
    elif "query" in record and "response" in record:
        question, answer = str(record["query"]), str(record["response"])
    elif "instruction" in record and "output" in record and not record.get("input"):
        question, answer = str(record["instruction"]), str(record["output"])
    else:
        raise KeyError("question/answer (GSM8K), query/response (MetaMathQA) or instruction/output with an empty "
                       "input (Alpaca)")
    return Item(str(index), ALPACA_PROMPT.format(question=question), answer)


def read_items(settings: NllSettings, *, where: str = "benchmarks.nll") -> list[Item]:
    """Every item of the data file (the first `limit`); ConfigError naming the line that cannot be used."""
    rows = read_jsonl(settings.data, where=f"{where}.data")[: settings.limit]
    return [_item(record, index, settings, where=f"{where}.data: {settings.data} line {number}")
            for index, (number, record) in enumerate(rows)]


def _item(record: dict[str, Any], index: int, settings: NllSettings, *, where: str) -> Item:
    if settings.format == "metamath":
        try:
            return metamath_item(index, record)
        except KeyError as error:
            raise ConfigError(f"{where}: format 'metamath' needs the fields {error.args[0]}; for other "
                              "prompt/answer pairs use format: pairs") from None
        except ValueError as error:
            raise ConfigError(f"{where}: {error}; a GSM8K answer ends with '#### N'") from None
    missing = [name for name in (settings.prompt_field, settings.answer_field) if name not in record]
    if missing:
        raise ConfigError(f"{where} lacks {missing}; set prompt_field/answer_field to the fields holding the "
                          f"prompt and the reference answer (its fields: {sorted(record)})")
    answer = str(record[settings.answer_field])
    if not answer.strip():
        raise ConfigError(f"{where}: the answer field {settings.answer_field!r} is empty: nothing to score")
    item_id = str(record.get("id", index))
    return Item(item_id, str(record[settings.prompt_field]), answer)


def parse_section(section: Mapping[str, Any], *, where: str, base_dir: Path) -> NllSettings:
    """Check the fields and read every item (so bad data fails before any model loads)."""
    fields = check_fields(section, where=where, allowed=FIELDS)
    default = dataclass_defaults(NllSettings)
    data_format = get_choice(fields, "format", where=where, choices=FORMATS, default=default["format"])
    if fields.get("data") is None and data_format == "metamath":
        data = PACKAGED_GSM8K_TEST
    else:
        data = get_path(fields, "data", where=where, base_dir=base_dir)
    for name in ("prompt_field", "answer_field"):
        if name in fields and data_format != "pairs":
            raise ConfigError(f"{where}.{name}: only used with format: pairs (format is {data_format!r}); remove it")
        if name in fields and (not isinstance(fields[name], str) or not fields[name]):
            raise ConfigError(f"{where}.{name}: expected a field name, got {fields[name]!r}")
    settings = NllSettings(
        data=data,
        format=data_format,
        prompt_field=fields.get("prompt_field", default["prompt_field"]),
        answer_field=fields.get("answer_field", default["answer_field"]),
        limit=get_int(fields, "limit", where=where, default=None, minimum=1),
        batch_size=get_int(fields, "batch_size", where=where, default=None, minimum=1),
        max_length=get_int(fields, "max_length", where=where, default=default["max_length"], minimum=2),
        add_eos=get_bool(fields, "add_eos", where=where, default=default["add_eos"]),
        generate=get_int(fields, "generate", where=where, default=default["generate"], minimum=0),
        max_new_tokens=get_int(fields, "max_new_tokens", where=where, default=None, minimum=1),
    )
    if settings.max_new_tokens is not None and not settings.generate:
        raise ConfigError(f"{where}.max_new_tokens: only used with generate: K (K > 0 prompts to complete); "
                          "set generate or remove max_new_tokens")
    items = read_items(settings, where=where)
    if len({item.id for item in items}) != len(items):
        raise ConfigError(f"{where}.data: {data}: item ids repeat; give every line a unique 'id' (or none)")
    if settings.generate > len(items):
        raise ConfigError(f"{where}.generate: {settings.generate} prompts to complete, but {data} has only "
                          f"{len(items)} items (after limit); use generate: {len(items)} or fewer")
    return settings


def encode(item: Item, tokenizer: Any, settings: NllSettings) -> tuple[list[int], int, bool]:
    """(token ids of prompt + answer, number of prompt tokens, truncated?)."""
    prompt = tokenizer(item.prompt)["input_ids"]
    answer = tokenizer(item.answer, add_special_tokens=False)["input_ids"]
    if settings.add_eos and tokenizer.eos_token_id is not None:
        answer = answer + [tokenizer.eos_token_id]
    if len(prompt) >= settings.max_length:
        raise ConfigError(f"benchmarks.nll: item {item.id}'s prompt has {len(prompt)} tokens, max_length is "
                          f"{settings.max_length}: no answer token would be scored; raise max_length")
    ids = (prompt + answer)[: settings.max_length]
    return ids, len(prompt), len(prompt) + len(answer) > settings.max_length


def answer_nll(model: torch.nn.Module, batch: list[tuple[list[int], int]], *, pad_id: int) -> list[list[float]]:
    """Per answer token NLL (nats) for each (ids, n_prompt) of the batch, from one padded forward pass."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    device = next(model.parameters()).device
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = input_ids[:, 1:].to(device)
    token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
    return [token_nll[row, n_prompt - 1 : len(ids) - 1].tolist() for row, (ids, n_prompt) in enumerate(batch)]


def _batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run(settings: NllSettings, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
    """Score every item not already in items.jsonl; write summary.json from all of them."""
    start = time.perf_counter()
    items = read_items(settings)
    log = ItemLog(out_dir / "items.jsonl")
    done = log.done_ids()
    todo = [item for item in items if item.id not in done]
    shown = {item.id for item in items[: settings.generate]}
    if todo:
        tokenizer, network = model.tokenizer, model.model
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for chunk in _batches(todo, settings.batch_size or model.generation.batch_size):
            encoded = [encode(item, tokenizer, settings) for item in chunk]
            losses = answer_nll(network, [(ids, n_prompt) for ids, n_prompt, _ in encoded], pad_id=pad_id)
            completions = _completions([item for item in chunk if item.id in shown], model, settings)
            for item, (ids, n_prompt, truncated), token_losses in zip(chunk, encoded, losses):
                total = float(sum(token_losses))
                shown_text = {"prompt": item.prompt, "reference": item.answer,
                              "generation": completions[item.id]} if item.id in completions else {}
                log.append({"id": item.id, "score": total / len(token_losses),
                            "scores": {"nll": total / len(token_losses), "sum_nll": total},
                            "n_tokens": len(token_losses), "n_prompt_tokens": n_prompt, "truncated": truncated,
                            **shown_text})
    wanted = {item.id for item in items}
    records = [record for record in log.records() if str(record["id"]) in wanted]
    return Summary.for_model(
        model,
        benchmark=NLL.key,
        title=NLL.title,
        metrics=summary_metrics(records),
        primary_metric="nll",
        metric_kind="mean",
        lower_is_better=True,
        n_items=len(records),
        extra={"answer_tokens": sum(int(r["n_tokens"]) for r in records), "data": str(settings.data),
               "format": settings.format, "add_eos": settings.add_eos, "generated_items": len(shown),
               "max_length": settings.max_length, "truncated_items": sum(bool(r["truncated"]) for r in records),
               "measure": "mean over items of the mean NLL (nats) per answer token, teacher-forced",
               "eval_time_s": round(time.perf_counter() - start, 3)},
    ).write(out_dir)


def _completions(items: list[Item], model: ModelHandle, settings: NllSettings) -> dict[str, str]:
    """Greedy completions of these items' prompts (stopped by the end-of-sequence token), by item id."""
    if not items:
        return {}
    max_new_tokens = settings.max_new_tokens or model.generation.max_new_tokens
    texts = model.generator.generate([item.prompt for item in items], max_new_tokens=max_new_tokens,
                                     temperature=0.0, desc="nll: sample generations")
    return {item.id: samples[0] for item, samples in zip(items, texts)}


def summary_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """nll: mean of the items' per-token NLL (the CI's statistic); token_nll and perplexity pool all tokens."""
    tokens = sum(int(record["n_tokens"]) for record in records)
    token_nll = sum(float(record["scores"]["sum_nll"]) for record in records) / tokens
    return {"nll": sum(float(record["score"]) for record in records) / len(records),
            "token_nll": token_nll, "perplexity": math.exp(token_nll)}


class NllBenchmark(Benchmark):
    """Teacher-forced answer NLL: `parse_section` and `run` above."""

    key = "nll"
    title = "nll"  # the name reports have always shown

    def parse_section(self, section: Mapping[str, Any], *, where: str, base_dir: Path) -> NllSettings:
        return parse_section(section, where=where, base_dir=base_dir)

    def run(self, settings: NllSettings, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
        return run(settings, model=model, out_dir=out_dir)


NLL = NllBenchmark()
