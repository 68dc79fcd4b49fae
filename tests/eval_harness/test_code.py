"""HumanEval/MBPP: config validation, programs, scoring of given samples, and resumable runs with a scripted model."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eval_harness.config import GenerationDefaults
from eval_harness.errors import ConfigError
from eval_harness.passk import pass_at_k
from eval_harness.results import ItemLog, read_json
from eval_harness.tasks import code
from eval_harness.tasks.code import CodeSettings, humaneval_problems, parse_section, run, score_samples

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mbpp"
MBPP_FILE = FIXTURES / "mbpp_sample.jsonl"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --------------------------------------------------------------------------- config


def test_parse_defaults_and_fields(tmp_path: Path) -> None:
    humaneval = parse_section({}, where="benchmarks.humaneval", base_dir=tmp_path)
    assert humaneval.benchmark == "humaneval" and humaneval.data is None and humaneval.k == (1,)
    assert humaneval.timeout_s == 3.0 and humaneval.workers is None and humaneval.fewshot_ids == ()
    mbpp = parse_section({"data": str(MBPP_FILE), "n_samples": 20, "temperature": 0.8, "k": [10, 1], "limit": 2},
                         where="benchmarks.mbpp", base_dir=tmp_path)
    assert mbpp.k == (1, 10) and mbpp.data == MBPP_FILE and mbpp.fewshot_ids == (2, 3, 4)
    relative = parse_section({"data": "mbpp_sample.jsonl"}, where="benchmarks.mbpp", base_dir=FIXTURES)
    assert relative.data == MBPP_FILE
    renamed = parse_section({"benchmark": "mbpp", "data": str(MBPP_FILE)}, where="benchmarks.mbpp_small",
                            base_dir=tmp_path)
    assert renamed.benchmark == "mbpp"
    assert code.MBPP.parse_section({"data": str(MBPP_FILE)}, where="benchmarks.x", base_dir=tmp_path).benchmark == "mbpp"


@pytest.mark.parametrize(("section", "field", "hint"), [
    ({}, "benchmarks.mbpp.data", "required"),
    ({"data": "missing.jsonl"}, "benchmarks.mbpp.data", "does not exist"),
    ({"data": str(MBPP_FILE), "n_samples": 5, "temperature": 0.0}, "benchmarks.mbpp.temperature", "temperature > 0"),
    ({"data": str(MBPP_FILE), "n_samples": 5, "temperature": 0.8, "k": [1, 10]}, "benchmarks.mbpp.k",
     "raise n_samples"),
    ({"data": str(MBPP_FILE), "k": "1"}, "benchmarks.mbpp.k", "list of integers"),
    ({"data": str(MBPP_FILE), "workers": 10_000}, "benchmarks.mbpp.workers", "at most"),
    ({"data": str(MBPP_FILE), "timeout_s": 0}, "benchmarks.mbpp.timeout_s", "number in"),
    ({"data": str(MBPP_FILE), "fewshot_ids": [2, 99]}, "benchmarks.mbpp.fewshot_ids", "task 99"),
    ({"data": str(MBPP_FILE), "split": "train"}, "benchmarks.mbpp.split", "test, all"),
    ({"data": str(MBPP_FILE), "nsamples": 3}, "benchmarks.mbpp.nsamples", "unknown field"),
])
def test_bad_sections_name_the_field_and_the_fix(tmp_path: Path, section: dict, field: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=field) as raised:
        parse_section(section, where="benchmarks.mbpp", base_dir=tmp_path)
    assert hint in str(raised.value)


def test_bad_data_files_are_rejected_before_any_model_loads(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text(MBPP_FILE.read_text() + "{not json\n")
    with pytest.raises(ConfigError, match=r"benchmarks.mbpp.data: .* line 9 is not JSON"):
        parse_section({"data": str(broken)}, where="benchmarks.mbpp", base_dir=tmp_path)
    sanitized = _write_jsonl(tmp_path / "sanitized.jsonl", [{"task_id": 11, "prompt": "x", "code": "", "test_list": []}])
    with pytest.raises(ConfigError, match="lacks MBPP field 'text'"):
        parse_section({"data": str(sanitized)}, where="benchmarks.mbpp", base_dir=tmp_path)
    only_out_of_split = _write_jsonl(tmp_path / "few.jsonl", [json.loads(MBPP_FILE.read_text().splitlines()[-1])])
    with pytest.raises(ConfigError, match="benchmarks.mbpp.split"):
        parse_section({"data": str(only_out_of_split), "fewshot_ids": []}, where="benchmarks.mbpp", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="benchmarks.humaneval.split: only MBPP"):
        parse_section({"split": "all"}, where="benchmarks.humaneval", base_dir=tmp_path)


# --------------------------------------------------------------------------- MBPP prompts and programs


def test_mbpp_prompt_is_three_shot_and_test_split_excludes_prompt_tasks(tmp_path: Path) -> None:
    settings = parse_section({"data": str(MBPP_FILE)}, where="benchmarks.mbpp", base_dir=tmp_path)
    problems = code.load_problems(settings)
    assert [p.task_id for p in problems] == ["11", "12", "13", "14"]
    prompt = problems[0].prompt
    assert prompt.count("You are an expert Python programmer") == 4 and prompt.count("[DONE]") == 3
    assert prompt.endswith("Your code should pass these tests:\n\nassert count_vowels('hello') == 2\n"
                           "assert count_vowels('xyz') == 0\nassert count_vowels('AEIOU') == 5\n[BEGIN]\n")
    assert "def sum_squares(nums):\n    return sum(x * x for x in nums)\n[DONE]" in prompt  # \r\n normalised
    everything = parse_section({"data": str(MBPP_FILE), "split": "all", "fewshot_ids": []},
                               where="benchmarks.mbpp", base_dir=tmp_path)
    assert len(code.load_problems(everything)) == 8
    assert "You are an expert" in code.load_problems(everything)[0].prompt


def test_extract_code_takes_the_first_fenced_block_for_mbpp_only() -> None:
    fenced = "Here you go:\n```python\ndef f():\n    return 1\n```\nmore text\n[DONE]"
    assert code.extract_code(fenced, "mbpp") == "def f():\n    return 1\n"
    assert code.extract_code("def f():\n    return 1\n[DONE] trailing", "mbpp") == "def f():\n    return 1\n"
    assert code.extract_code(fenced, "humaneval") == fenced


# --------------------------------------------------------------------------- score given samples


@pytest.mark.slow
def test_humaneval_canonical_solutions_score_164_and_broken_ones_0(tmp_path: Path) -> None:
    problems = humaneval_problems(None)
    assert len(problems) == 164
    canonical = _write_jsonl(tmp_path / "canonical.jsonl",
                             [{"task_id": p.task_id, "completion": p.reference} for p in problems])
    result = score_samples("humaneval", canonical, k=[1], timeout_s=10.0, workers=code.available_cores())
    assert result["passed"] == 164 and result["metrics"] == {"pass@1": 1.0}, result
    lines = [json.loads(line) for line in Path(result["results"]).read_text().splitlines()]
    assert len(lines) == 164 and all(line["passed"] and line["result"] == "passed" for line in lines)

    # Broken: a wrong answer, and a "pass" by exiting 0 before the tests run (caught by the end marker).
    broken_rows = [{"task_id": p.task_id,
                    "completion": "    return None\n" if i % 2 else "    import sys\n    sys.exit(0)\n"}
                   for i, p in enumerate(problems)]
    broken = _write_jsonl(tmp_path / "broken.jsonl", broken_rows)
    result = score_samples("humaneval", broken, k=[1], timeout_s=10.0, out_path=tmp_path / "broken_results.jsonl")
    assert result["passed"] == 0 and result["metrics"] == {"pass@1": 0.0}
    statuses = {json.loads(line)["result"] for line in (tmp_path / "broken_results.jsonl").read_text().splitlines()}
    assert "exited before the tests finished" in statuses and "wrong answer" in statuses
    assert statuses <= {"exited before the tests finished", "wrong answer", "error"}


# Completions that try to pass without computing the answer: each must fail, while the reference passes.
# Before the checker ran in its own process they all passed (the tests ran inside the program).
CHEATS = {
    "rerun with -O (asserts stripped)": """
import os, sys
if not sys.flags.optimize:
    os.execv(sys.executable, [sys.executable, "-O", *sys.argv])
""",
    "child interpreter with PYTHONOPTIMIZE": """
import os, subprocess, sys
if "CHILD" not in os.environ:
    done = subprocess.run([sys.executable, *sys.argv], env={"PYTHONOPTIMIZE": "2", "CHILD": "1"})
    os._exit(done.returncode)
""",
    "object whose == is always true": """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
    def __bool__(self):
        return True
ANSWER = Anything()
""",
    "builtin subclass whose == is always true": """
class Anything(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
ANSWER = Anything(1)
""",
    "exit 0 before the tests": "import sys\nsys.exit(0)\n",
    "forged verdict on every descriptor": """
import os
for fd in range(3, 64):
    try:
        os.write(fd, b'{"passed": true}')
    except OSError:
        pass
""",
    "assertions disabled by patching builtins": """
import builtins
builtins.AssertionError = type("Quiet", (Exception,), {})
""",
}


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_completions_that_bypass_or_fool_the_checks_fail(cheat: str) -> None:
    """HumanEval/0 returns a bool and MBPP task 13 a list: the cheat defines the function as returning
    its fake ANSWER (or, if it defines none, the wrong constant), after its trick."""
    humaneval = humaneval_problems(None)[0]
    mbpp = next(p for p in code.mbpp_problems(MBPP_FILE, fewshot_ids=(), split="all") if p.task_id == "13")
    trick = CHEATS[cheat]
    answer = "ANSWER" if "ANSWER" in trick else "[]"
    fake_he = f"    return {answer if answer == 'ANSWER' else 'False'}\n{trick}"
    fake_mbpp = f"{trick}\ndef merge_sorted(a, b):\n    return {answer}\n"
    records = code.execute([humaneval, mbpp], [[humaneval.reference, fake_he], [mbpp.reference, fake_mbpp]],
                           benchmark="humaneval", limits=code.code_limits(10.0), workers=code.available_cores())
    for (good, bad), name in zip(records, ("HumanEval/0", "MBPP 13")):
        assert good["passed"], (name, good)
        assert not bad["passed"], (name, cheat, bad)


def test_mbpp_check_proxies_only_the_programs_names() -> None:
    check = code.mbpp_check("OFFSET = 10\n", "import re\nassert add_offset(OFFSET) == 20\n"
                            "assert math.isclose(area(1), 3.14)\nassert len(x for x in []) == 0\n",
                            where="t")
    assert check.proxies == ("add_offset", "area") and check.modules == ("math",)
    with pytest.raises(ConfigError, match="task 7.*not Python"):
        code.mbpp_check("", "assert f(", where="task 7")


def test_program_gets_the_standard_library_only() -> None:
    """numpy/yaml/... of the host must not import in the sandbox, even with sys.path pointed at them."""
    import sysconfig

    site = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]
    names = sorted(p.name for p in Path(site).iterdir() if p.suffix == "" and (p / "__init__.py").exists())
    if not names:
        pytest.skip(f"the base interpreter's {site} holds no package")
    problem = code.Problem(task_id="t", prompt="", program_head="",
                           check=code.CheckSpec(setup="", test="assert found() == []\n", proxies=("found",)),
                           reference="")
    program = (f"import importlib, sys\nsys.path.append({site!r})\n"
               f"def found():\n    hits = []\n    for name in {names[:20]!r}:\n        try:\n"
               f"            importlib.import_module(name)\n            hits.append(name)\n"
               f"        except ImportError:\n            pass\n    return hits\n")
    (record,), = code.execute([problem], [[program]], benchmark="humaneval", limits=code.code_limits(10.0),
                              workers=1)
    assert record["passed"], record


def test_bad_samples_are_scored_as_failed_and_the_run_goes_on(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in MBPP_FILE.read_text().splitlines()]
    good = {"task_id": 11, "completion": rows[3]["code"]}
    path = tmp_path / "samples.jsonl"
    path.write_bytes(json.dumps(good).encode() + b"\n"
                     + b'{"task_id": 11, "completion": "def count_vowels(s):\\n    return 2  # \\ud800"}\n'
                     + b'{"task_id": 11, "completion": 123}\n'
                     + b'{"task_id": 11, "completion": "def count_vowels(s): return \xff\xfe 2"}\n')
    result = score_samples("mbpp", path, problems_path=MBPP_FILE, k=[1], timeout_s=5.0, workers=1)
    assert result["n_samples"] == 4 and result["passed"] == 1
    lines = [json.loads(line) for line in Path(result["results"]).read_text().splitlines()]
    assert [line["passed"] for line in lines] == [True, False, False, False]
    assert "not valid UTF-8" in lines[1]["result"] and "surrogates" in lines[1]["result"]
    assert lines[2]["result"] == "invalid sample: completion is a int, not a string"
    assert "not valid UTF-8" in lines[3]["result"]


@pytest.mark.parametrize("timeout", [float("nan"), 0.0, -1.0, float("inf"), 1e9, True])
def test_score_code_timeout_must_be_a_finite_positive_number(tmp_path: Path, timeout: float) -> None:
    path = _write_jsonl(tmp_path / "samples.jsonl", [{"task_id": 11, "completion": "pass"}])
    with pytest.raises(ConfigError, match="--timeout-s: expected seconds per program in \\[0.1, 3600.0\\]"):
        score_samples("mbpp", path, problems_path=MBPP_FILE, timeout_s=timeout, workers=1)


def test_score_samples_mbpp_with_several_samples_per_task(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in MBPP_FILE.read_text().splitlines()]
    samples = []
    for row in rows[3:7]:  # tasks 11-14: reference twice (once fenced), a wrong one, an infinite loop
        samples += [{"task_id": row["task_id"], "completion": row["code"]},
                    {"task_id": row["task_id"], "completion": f"Sure.\n```python\n{row['code']}\n```\n"},
                    {"task_id": row["task_id"], "completion": "def nothing():\n    pass\n"},
                    {"task_id": row["task_id"], "completion": "while True:\n    pass\n"}]
    path = _write_jsonl(tmp_path / "samples.jsonl", samples)
    result = score_samples("mbpp", path, problems_path=MBPP_FILE, k=[1, 2, 10], timeout_s=2.0,
                           workers=code.available_cores())
    assert result["n_tasks"] == 4 and result["n_samples"] == 16 and result["passed"] == 8
    assert result["metrics"] == pytest.approx({"pass@1": 0.5, "pass@2": pass_at_k(4, 2, 2)})  # k=10 > 4 samples
    statuses = [json.loads(line)["result"] for line in Path(result["results"]).read_text().splitlines()]
    assert statuses[:4] == ["passed", "passed", "error", "timed out"]
    with pytest.raises(ConfigError, match="--problems"):
        score_samples("mbpp", path)
    with pytest.raises(ConfigError, match="--workers"):
        score_samples("mbpp", path, problems_path=MBPP_FILE, workers=0)
    with pytest.raises(ConfigError, match="--k"):
        score_samples("mbpp", path, problems_path=MBPP_FILE, k=[0])
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"task_id": 999, "completion": ""}])
    with pytest.raises(ConfigError, match="task_id 999"):
        score_samples("mbpp", bad, problems_path=MBPP_FILE)


# --------------------------------------------------------------------------- run() with a scripted model


@dataclass
class ScriptedGenerator:
    """Stands in for the HF generator: per prompt, the given completions; counts prompts; may fail."""

    answers: dict[str, list[str]]
    fail_on_call: int | None = None
    prompts_seen: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, num_samples=1, stop=(), seed=0,
                 desc="generate"):
        self.calls.append({"n": len(prompts), "num_samples": num_samples, "stop": tuple(stop),
                           "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed})
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("simulated crash")
        self.prompts_seen += prompts
        return [self.answers[prompt][:num_samples] for prompt in prompts]


@dataclass
class FakeModel:
    generator: ScriptedGenerator
    label: str = "nlora-test"
    method: str = "NLoRA"
    seed: int | None = 0
    trainable_params: int | None = 1234
    base_model: str = "models/tiny"
    generation: GenerationDefaults = field(default_factory=lambda: GenerationDefaults(temperature=0.7,
                                                                                      max_new_tokens=64))


def test_run_humaneval_resumes_and_scores_pass_at_k(tmp_path: Path) -> None:
    problems = humaneval_problems(None)[:20]
    # Task i gets i % 4 correct samples out of 3 (capped at 3): c = 0, 1, 2, 3, 0, ...
    answers = {p.prompt: [p.reference if s < min(i % 4, 3) else "    return 'wrong'\n" for s in range(3)]
               for i, p in enumerate(problems)}
    settings = CodeSettings(benchmark="humaneval", limit=20, n_samples=3, k=(1, 2, 3), timeout_s=10.0,
                            workers=code.available_cores())
    crashing = FakeModel(ScriptedGenerator(answers, fail_on_call=2))
    with pytest.raises(KeyboardInterrupt):
        run(settings, model=crashing, out_dir=tmp_path)
    first = ItemLog(tmp_path / "items.jsonl").records()
    assert len(first) == code.TASKS_PER_CHUNK and not (tmp_path / "summary.json").exists()

    model = FakeModel(ScriptedGenerator(answers))
    summary = run(settings, model=model, out_dir=tmp_path)
    assert len(model.generator.prompts_seen) == 20 - code.TASKS_PER_CHUNK  # only unfinished tasks generated
    assert model.generator.calls[0]["stop"] == code.HUMANEVAL_STOP
    assert model.generator.calls[0]["temperature"] == 0.7 and model.generator.calls[0]["max_new_tokens"] == 64
    records = {r["id"]: r for r in ItemLog(tmp_path / "items.jsonl").records()}
    assert len(records) == 20
    expected_c = [min(i % 4, 3) for i in range(20)]
    assert [records[p.task_id]["c"] for p in problems] == expected_c
    assert all(records[p.task_id]["score"] == pytest.approx(c / 3) for p, c in zip(problems, expected_c))
    for k in (1, 2, 3):
        expected = sum(pass_at_k(3, c, k) for c in expected_c) / 20
        assert summary["metrics"][f"pass@{k}"] == pytest.approx(expected)
    assert summary["primary_metric"] == "pass@1" and summary["metric_kind"] == "mean"
    assert summary["n_items"] == 20 and summary["method"] == "NLoRA" and summary["trainable_params"] == 1234
    assert read_json(tmp_path / "summary.json") == json.loads(json.dumps(summary))
    assert records[problems[0].task_id]["samples"][0]["status"] == "wrong answer"
    assert "AssertionError" in records[problems[0].task_id]["samples"][0]["error"]


def test_run_mbpp_greedy_with_generation_defaults(tmp_path: Path) -> None:
    settings = parse_section({"data": str(MBPP_FILE), "workers": 1, "timeout_s": 10},
                             where="benchmarks.mbpp", base_dir=tmp_path)
    problems = code.load_problems(settings)
    answers = {p.prompt: [p.reference + "\n"] for p in problems}
    answers[problems[1].prompt] = ["def fib(n):\n    return n\n"]  # wrong for fib(10)
    model = FakeModel(ScriptedGenerator(answers), generation=GenerationDefaults(temperature=0.0))
    summary = run(settings, model=model, out_dir=tmp_path)
    assert summary["metrics"] == {"pass@1": 0.75}
    assert model.generator.calls[0]["stop"] == ("[DONE]",) and model.generator.calls[0]["num_samples"] == 1
    sampled = parse_section({"data": str(MBPP_FILE), "n_samples": 2}, where="benchmarks.mbpp", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="benchmarks.mbpp.temperature"):
        run(sampled, model=model, out_dir=tmp_path / "other")


# --------------------------------------------------------------------------- end to end with a real model


@pytest.mark.slow
def test_runner_scores_humaneval_and_mbpp_with_the_tiny_model(eval_dir: Path) -> None:
    """Config -> tiny Llama with an adapter -> HF generation -> sandbox -> items.jsonl/summary.json."""
    from eval_harness.eval_yaml import load_config
    from eval_harness.runner import run_config
    from tests.eval_harness.conftest import tiny_config, write_yaml

    config = tiny_config(models=[{"label": "lora", "adapter": "lora"}],
                         benchmarks={"humaneval": {"limit": 2, "n_samples": 2, "temperature": 0.8, "k": [1, 2]},
                                     "mbpp": {"data": str(MBPP_FILE), "limit": 2, "timeout_s": 10}})
    run_dir = eval_dir / "run"
    run_config(load_config(write_yaml(eval_dir, config)), run_dir, command=["test"])
    for benchmark, n in (("humaneval", 2), ("mbpp", 1)):
        summary = read_json(run_dir / "lora" / benchmark / "summary.json")
        records = ItemLog(run_dir / "lora" / benchmark / "items.jsonl").records()
        assert [r["n"] for r in records] == [n, n]
        # A random 2-block model writes no working code: every sample fails, and says why.
        assert summary["metrics"]["pass@1"] == 0.0 and summary["n_items"] == 2
        assert all(not s["passed"] and s["status"] for r in records for s in r["samples"])
    assert set(read_json(run_dir / "lora" / "humaneval" / "summary.json")["metrics"]) == {"pass@1", "pass@2"}
