"""MT-Bench (Zheng et al. 2023): two-turn answers, graded by a judge model over an OpenAI-compatible API.

- Answers: each of the 80 questions gets a first-turn answer, then a second-turn answer that sees the
  first (the model's chat template when it has one, else a plain "### User / ### Assistant" layout).
  Sampling temperature per category as in FastChat (writing/roleplay 0.7, stem/humanities 0.1, the rest
  greedy) unless the section sets one.
- Single-answer grading (FastChat's `single-v1`, and `single-math-v1` with GPT-4's reference answers for
  math/reasoning/coding; the `-multi-turn` prompts for turn 2): a 1-10 rating parsed from "[[rating]]".
- Pairwise comparison against `baseline_label` (mode `both`): FastChat's `pair-v2` / `pair-math-v1`
  prompts, judged in both orders; a verdict that flips with the order counts as a tie.
Every answer and every judgment is appended to a log as it finishes: a rerun never regenerates an answer
nor asks the judge again. The prompts and questions are the packaged FastChat files (Apache-2.0).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from eval_harness.errors import ConfigError
from eval_harness.fields import check_fields, dataclass_defaults, get_choice, get_float, get_int, get_path
from eval_harness.jsonl import read_records
from eval_harness.judge import JudgeClient, JudgeError, JudgeSettings
from eval_harness.results import ItemLog, atomic_write_text
from eval_harness.run_folder import RunFolder
from eval_harness.summary import Summary
from eval_harness.tasks.base import Benchmark

if TYPE_CHECKING:
    from eval_harness.models import ModelHandle

logger = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent.parent / "data" / "mt_bench"
FIELDS = ("questions", "judge_prompts", "reference_answers", "judge", "mode", "baseline_label", "limit",
          "categories", "max_new_tokens", "temperature")
JUDGE_FIELDS = ("base_url", "model", "api_key_env", "temperature", "max_tokens", "timeout_s", "max_retries",
                "concurrency")
MODES = ("single", "both")  # both: single grading, then pairwise against baseline_label
CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
NEED_REFERENCE = ("math", "reasoning", "coding")
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1}  # FastChat; else 0.0
RATING = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"))
VERDICTS = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "tie"}
PLAIN_STOP = ("### User:",)
QUESTIONS_PER_CHUNK = 16


@dataclass(frozen=True)
class MTBenchSettings:
    """A validated `benchmarks.mt_bench` section."""

    questions: Path
    judge_prompts: Path
    reference_answers: Path
    judge: JudgeSettings
    mode: str = "single"  # one of MODES
    baseline_label: str | None = None
    limit: int | None = None
    categories: tuple[str, ...] = CATEGORIES
    max_new_tokens: int | None = None
    temperature: float | None = None  # None: FastChat's per-category temperatures


def parse_section(section: Mapping[str, Any], *, where: str, base_dir: Path) -> MTBenchSettings:
    """Check the section and the judge settings (API key variable included) before any model loads."""
    section = check_fields(section, where=where, allowed=FIELDS, required=("judge",))
    paths = {
        name: get_path(section, name, where=where, base_dir=base_dir, required=False) or DATA / default
        for name, default in (("questions", "question.jsonl"), ("judge_prompts", "judge_prompts.jsonl"),
                              ("reference_answers", "reference_answer_gpt-4.jsonl"))
    }
    mode = get_choice(section, "mode", where=where, choices=MODES, default=dataclass_defaults(MTBenchSettings)["mode"])
    baseline = section.get("baseline_label")
    if mode == "both" and not isinstance(baseline, str):
        raise ConfigError(f"{where}.baseline_label: mode 'both' compares every model with one of them; "
                          f"name its label here (got {baseline!r})")
    categories = section.get("categories", list(CATEGORIES))
    if not isinstance(categories, list) or not set(categories) <= set(CATEGORIES) or not categories:
        raise ConfigError(f"{where}.categories: expected a non-empty list of {', '.join(CATEGORIES)}, "
                          f"got {categories!r}")
    temperature = section.get("temperature")
    return MTBenchSettings(
        **paths,
        judge=_parse_judge(section["judge"], where=f"{where}.judge"),
        mode=mode,
        baseline_label=baseline,
        limit=get_int(section, "limit", where=where, default=None, minimum=1),
        categories=tuple(categories),
        max_new_tokens=get_int(section, "max_new_tokens", where=where, default=None, minimum=1),
        temperature=None if temperature is None else get_float(section, "temperature", where=where, default=0.0,
                                                                low=0.0, high=2.0),
    )


def _parse_judge(section: Any, *, where: str) -> JudgeSettings:
    section = check_fields(section, where=where, allowed=JUDGE_FIELDS, required=("base_url", "model"))
    base_url = section["base_url"]
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, "
                          f"got {base_url!r}")
    key_variable = section.get("api_key_env", "OPENAI_API_KEY")
    api_key = None
    if key_variable is not None:
        api_key = os.environ.get(str(key_variable))
        if not api_key:
            raise ConfigError(f"{where}.api_key_env: environment variable {key_variable!r} is not set; export "
                              "it, or set api_key_env: null for an endpoint that needs no key")
    default = dataclass_defaults(JudgeSettings)
    return JudgeSettings(
        base_url=base_url,
        model=str(section["model"]),
        api_key=api_key,
        temperature=get_float(section, "temperature", where=where, default=default["temperature"], low=0.0, high=2.0),
        max_tokens=get_int(section, "max_tokens", where=where, default=default["max_tokens"], minimum=1),
        timeout_s=get_float(section, "timeout_s", where=where, default=default["timeout_s"], low=0.1, high=3600.0),
        max_retries=get_int(section, "max_retries", where=where, default=default["max_retries"], minimum=0),
        concurrency=get_int(section, "concurrency", where=where, default=default["concurrency"], minimum=1),
    )


# --------------------------------------------------------------------------- data


def load_questions(settings: MTBenchSettings) -> list[dict[str, Any]]:
    questions = [q for q in read_records(settings.questions, where="benchmarks.mt_bench.questions") if q["category"] in settings.categories]
    return questions[: settings.limit] if settings.limit else questions


def load_judge_prompts(settings: MTBenchSettings) -> dict[str, dict[str, Any]]:
    return {prompt["name"]: prompt for prompt in read_records(settings.judge_prompts, where="benchmarks.mt_bench.judge_prompts")}


def load_references(settings: MTBenchSettings, questions: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Reference answers by question id; warns about math/reasoning/coding questions graded without one."""
    rows = read_records(settings.reference_answers, where="benchmarks.mt_bench.reference_answers", allow_empty=True)
    references = {ref["question_id"]: ref["choices"][0]["turns"] for ref in rows}
    missing = [q["question_id"] for q in questions if q["category"] in NEED_REFERENCE
               and q["question_id"] not in references]
    if missing:
        logger.warning("mt_bench: no reference answer in %s for questions %s; they are graded with the general "
                       "prompts (single-v1/pair-v2) instead of the -math- ones", settings.reference_answers, missing)
    return references


# --------------------------------------------------------------------------- answers


def chat_prompt(tokenizer: Any, exchange: list[tuple[str, str | None]]) -> str:
    """The prompt for the next assistant turn, given (user, assistant) pairs (the last assistant is None)."""
    messages: list[dict[str, str]] = []
    for user, assistant in exchange:
        messages.append({"role": "user", "content": user})
        if assistant is not None:
            messages.append({"role": "assistant", "content": assistant})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)
    return text + "### Assistant:\n"


def question_temperature(settings: MTBenchSettings, category: str) -> float:
    return settings.temperature if settings.temperature is not None else CATEGORY_TEMPERATURE.get(category, 0.0)


def generate_turn(model: ModelHandle, settings: MTBenchSettings, prompts: list[str], temperatures: list[float],
                  desc: str) -> list[str]:
    """One completion per prompt, grouped by sampling temperature."""
    completions: list[str] = [""] * len(prompts)
    max_new_tokens = settings.max_new_tokens or model.generation.max_new_tokens
    for temperature in sorted(set(temperatures)):
        indices = [i for i, t in enumerate(temperatures) if t == temperature]
        outputs = model.generator.generate(
            [prompts[i] for i in indices], max_new_tokens=max_new_tokens, temperature=temperature,
            stop=PLAIN_STOP, seed=model.generation.seed, desc=desc,
        )
        for i, output in zip(indices, outputs):
            completions[i] = output[0].strip()
    return completions


def generate_answers(settings: MTBenchSettings, model: ModelHandle, out_dir: Path,
                     questions: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Two-turn answers for every question, resumable through answers.jsonl."""
    log = ItemLog(out_dir / "answers.jsonl")
    answers = {int(record["id"]): record["turns"] for record in log.records()}
    pending = [q for q in questions if q["question_id"] not in answers]
    for start in range(0, len(pending), QUESTIONS_PER_CHUNK):
        chunk = pending[start : start + QUESTIONS_PER_CHUNK]
        temperatures = [question_temperature(settings, q["category"]) for q in chunk]
        first = generate_turn(model, settings, [chat_prompt(model.tokenizer, [(q["turns"][0], None)]) for q in chunk],
                              temperatures, f"mt_bench turn 1 ({start + len(chunk)}/{len(pending)})")
        second_prompts = [chat_prompt(model.tokenizer, [(q["turns"][0], a), (q["turns"][1], None)])
                          for q, a in zip(chunk, first)]
        second = generate_turn(model, settings, second_prompts, temperatures,
                               f"mt_bench turn 2 ({start + len(chunk)}/{len(pending)})")
        for question, answer_1, answer_2 in zip(chunk, first, second):
            log.append({"id": str(question["question_id"]), "category": question["category"],
                        "turns": [answer_1, answer_2]})
            answers[question["question_id"]] = [answer_1, answer_2]
    return answers


# --------------------------------------------------------------------------- judging


def parse_rating(judgment: str) -> float | None:
    """FastChat's rule: the first "[[x]]", else the first "[x]"; None if neither is there.

    Unlike FastChat, a rating outside the 1-10 scale the prompt asks for is no rating (None), so a
    runaway judge cannot move the mean.
    """
    for pattern in RATING:
        match = pattern.search(judgment)
        if match:
            rating = float(match.group(1))
            return rating if 1.0 <= rating <= 10.0 else None
    return None


def parse_verdict(judgment: str) -> str | None:
    """"A", "B" or "tie" from FastChat's "[[A]]" / "[[B]]" / "[[C]]"; None if none is there."""
    found = [VERDICTS[token] for token in VERDICTS if token in judgment]
    return found[0] if len(found) == 1 else None


def single_request(prompts: Mapping[str, dict], question: dict, answers: list[str], turn: int,
                   references: Mapping[int, list[str]]) -> tuple[str, str, str]:
    """(prompt name, system prompt, user prompt) for grading one turn of one answer."""
    math = question["category"] in NEED_REFERENCE and question["question_id"] in references
    name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn == 2 else "")
    fields = {"question": question["turns"][0], "answer": answers[0], "question_1": question["turns"][0],
              "question_2": question["turns"][1], "answer_1": answers[0], "answer_2": answers[1]}
    if math:
        reference = references[question["question_id"]]
        fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    prompt = prompts[name]
    return name, prompt["system_prompt"], prompt["prompt_template"].format(**fields)


def pair_request(prompts: Mapping[str, dict], question: dict, answers_a: list[str], answers_b: list[str],
                 turn: int, references: Mapping[int, list[str]]) -> tuple[str, str, str]:
    """(prompt name, system prompt, user prompt) for comparing two answers on one turn."""
    math = question["category"] in NEED_REFERENCE and question["question_id"] in references
    name = ("pair-math-v1" if math else "pair-v2") + ("-multi-turn" if turn == 2 else "")
    fields = {"question": question["turns"][0], "answer_a": answers_a[0], "answer_b": answers_b[0],
              "question_1": question["turns"][0], "question_2": question["turns"][1],
              "answer_a_1": answers_a[0], "answer_a_2": answers_a[1],
              "answer_b_1": answers_b[0], "answer_b_2": answers_b[1]}
    if math:
        reference = references[question["question_id"]]
        fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    prompt = prompts[name]
    return name, prompt["system_prompt"], prompt["prompt_template"].format(**fields)


def judge_all(settings: MTBenchSettings, requests: dict[str, Callable[[JudgeClient], dict]], log: ItemLog,
              desc: str) -> None:
    """Ask the judge for every request id not yet in `log`, a few at a time; log each as it finishes.

    On the first request that fails for good (a refusal, a bad reply, retries used up) nothing more is
    sent: requests not yet started are cancelled, those in flight are still logged as they finish, and
    the error is raised naming its request, so a rerun pays only for what was never answered.
    """
    todo = {key: make for key, make in requests.items() if key not in log.done_ids()}
    if not todo:
        return
    client = JudgeClient(settings.judge)
    failure: tuple[str, Exception] | None = None
    try:
        with ThreadPoolExecutor(settings.judge.concurrency) as pool:
            futures = {pool.submit(make, client): key for key, make in todo.items()}
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc):
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except Exception as error:  # noqa: BLE001 - re-raised below, after the answers in flight
                    if failure is None:
                        failure = (futures[future], error)
                        for pending in futures:
                            pending.cancel()
                    continue
                log.append({"id": futures[future], **result})
    finally:
        client.close()
    if failure is not None:
        key, error = failure
        raise JudgeError(f"mt_bench judging stopped at request {key}: {error}") from error


def run(settings: MTBenchSettings, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
    """Answers, then single-answer grading; items.jsonl holds the parsed ratings, summary.json the means."""
    questions = load_questions(settings)
    answers = generate_answers(settings, model, out_dir, questions)
    prompts, references = load_judge_prompts(settings), load_references(settings, questions)
    judgments = ItemLog(out_dir / "judgments.jsonl")

    def grade(question: dict, turn: int) -> Callable[[JudgeClient], dict]:
        def ask(client: JudgeClient) -> dict:
            name, system, user = single_request(prompts, question, answers[question["question_id"]], turn, references)
            reply = client.complete(system, user)
            return {"question_id": question["question_id"], "turn": turn, "category": question["category"],
                    "judge_prompt": name, "rating": parse_rating(reply), "judgment": reply}
        return ask

    requests = {f"{q['question_id']}-t{turn}": grade(q, turn) for q in questions for turn in (1, 2)}
    judge_all(settings, requests, judgments, desc=f"{model.label}: mt_bench judging")
    records = [r for r in judgments.records() if r["id"] in requests]
    rated = [r for r in records if r["rating"] is not None]
    atomic_write_text(out_dir / "items.jsonl", "".join(
        json.dumps({"id": r["id"], "score": r["rating"], "turn": r["turn"], "category": r["category"]}) + "\n"
        for r in rated))
    return Summary.for_model(
        model, benchmark=MT_BENCH.key, title=MT_BENCH.title, metrics=_mean_scores(rated), primary_metric="score",
        metric_kind="mean", n_items=len(rated),
        extra={"unparsed_judgments": len(records) - len(rated), "judge_model": settings.judge.model,
               "settings": {**asdict(settings), "judge": {**asdict(settings.judge), "api_key": None}}},
    ).write(out_dir)


def _mean_scores(rated: list[dict]) -> dict[str, float]:
    def mean(values: Iterable[float]) -> float | None:
        values = list(values)
        return sum(values) / len(values) if values else None

    metrics = {"score": mean(r["rating"] for r in rated)}
    for turn in (1, 2):
        metrics[f"score_turn{turn}"] = mean(r["rating"] for r in rated if r["turn"] == turn)
    for category in CATEGORIES:
        metrics[f"score_{category}"] = mean(r["rating"] for r in rated if r["category"] == category)
    return {name: value for name, value in metrics.items() if value is not None}


def pairwise_key(opponent: str) -> str:
    """The folder (and benchmark name) of the pairwise comparison against `opponent`."""
    return f"mt_bench_vs_{opponent}"


def run_pairwise(settings: MTBenchSettings, *, label_a: str, label_b: str, run_dir: Path) -> dict[str, Any]:
    """label_a's answers against label_b's, each pair judged in both orders (position bias cancels)."""
    run = RunFolder(Path(run_dir))
    answers_a = _answers(run.benchmark_dir(label_a, MT_BENCH.key))
    answers_b = _answers(run.benchmark_dir(label_b, MT_BENCH.key))
    questions = [q for q in load_questions(settings) if q["question_id"] in answers_a and q["question_id"] in answers_b]
    prompts, references = load_judge_prompts(settings), load_references(settings, questions)
    out_dir = run.benchmark_dir(label_a, pairwise_key(label_b))
    judgments = ItemLog(out_dir / "judgments.jsonl")

    def compare(question: dict, turn: int, swapped: bool) -> Callable[[JudgeClient], dict]:
        def ask(client: JudgeClient) -> dict:
            first, second = (answers_b, answers_a) if swapped else (answers_a, answers_b)
            qid = question["question_id"]
            name, system, user = pair_request(prompts, question, first[qid], second[qid], turn, references)
            reply = client.complete(system, user)
            return {"question_id": qid, "turn": turn, "swapped": swapped, "judge_prompt": name,
                    "verdict": parse_verdict(reply), "judgment": reply}
        return ask

    requests = {f"{q['question_id']}-t{turn}-{'ba' if swapped else 'ab'}": compare(q, turn, swapped)
                for q in questions for turn in (1, 2) for swapped in (False, True)}
    judge_all(settings, requests, judgments, desc=f"{label_a} vs {label_b}: mt_bench pairwise")
    verdicts = {r["id"]: r["verdict"] for r in judgments.records()}
    items = []
    for question in questions:
        for turn in (1, 2):
            key = f"{question['question_id']}-t{turn}"
            items.append({"id": key, "score": pair_score(verdicts.get(f"{key}-ab"), verdicts.get(f"{key}-ba"))})
    atomic_write_text(out_dir / "items.jsonl", "".join(json.dumps(item) + "\n" for item in items))
    scores = [item["score"] for item in items]
    single = Summary.read(run.summary_path(label_a, MT_BENCH.key)) if run.is_finished(label_a, MT_BENCH.key) \
        else None
    return Summary(
        label=label_a, method=single.method if single else label_a, seed=None, benchmark=out_dir.name,
        title=out_dir.name, base_model=single.base_model if single else None,
        metrics={
            "win_rate_adjusted": sum(scores) / len(scores) if scores else 0.0,
            "win_rate": scores.count(1.0) / len(scores) if scores else 0.0,
            "tie_rate": scores.count(0.5) / len(scores) if scores else 0.0,
            "loss_rate": scores.count(0.0) / len(scores) if scores else 0.0,
        },
        primary_metric="win_rate_adjusted", metric_kind="mean", n_items=len(items),
        extra={"opponent": label_b, "judge_model": settings.judge.model},
    ).write(out_dir)


def pair_score(verdict_ab: str | None, verdict_ba: str | None) -> float:
    """Score of answer A: 1 win, 0.5 tie, 0 loss. The two orders must agree; otherwise it is a tie."""
    swapped_back = {"A": "B", "B": "A", "tie": "tie", None: None}[verdict_ba]
    if verdict_ab is None or swapped_back is None or verdict_ab != swapped_back:
        return 0.5
    return {"A": 1.0, "B": 0.0, "tie": 0.5}[verdict_ab]


def _answers(out_dir: Path) -> dict[int, list[str]]:
    return {int(record["id"]): record["turns"] for record in ItemLog(out_dir / "answers.jsonl").records()}


class MTBench(Benchmark):
    """Single-answer grading per model; mode `both` adds every label against `baseline_label` afterwards."""

    key = "mt_bench"
    title = "MT-Bench"

    def parse_section(self, section: Mapping[str, Any], *, where: str, base_dir: Path) -> MTBenchSettings:
        return parse_section(section, where=where, base_dir=base_dir)

    def check_models(self, settings: MTBenchSettings, *, labels: Sequence[str], where: str) -> None:
        if settings.mode == "both" and settings.baseline_label not in labels:
            raise ConfigError(f"{where}.baseline_label: {settings.baseline_label!r} is not a model label; "
                              f"use one of {list(labels)}")

    def run(self, settings: MTBenchSettings, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
        return run(settings, model=model, out_dir=out_dir)

    def run_cross_model(self, settings: MTBenchSettings, *, labels: Sequence[str],
                        run: RunFolder) -> list[dict[str, Any]]:
        """Mode `both`: every other label's answers against `baseline_label`'s, judged in both orders."""
        if settings.mode != "both":
            return []
        summaries = []
        for label in labels:
            if label == settings.baseline_label:
                continue
            key = pairwise_key(settings.baseline_label)
            if run.is_finished(label, key):
                summaries.append(run.read_summary(label, key))
                continue
            summaries.append(run_pairwise(settings, label_a=label, label_b=settings.baseline_label,
                                          run_dir=run.root))
        return summaries


MT_BENCH = MTBench()
