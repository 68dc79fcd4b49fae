"""summary.json's schema: version-0 files (written before `schema_version`) still load and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval_harness.report import build_report
from eval_harness.results import read_json
from eval_harness.run_folder import RunFolder
from eval_harness.summary import SCHEMA_VERSION, Summary, SummaryError

RUN_V0 = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0"  # written in the format of 2026-12-06


def test_version0_summaries_load_with_their_titles_and_details():
    gsm8k = Summary.read(RunFolder(RUN_V0).summary_path("nlora", "gsm8k"))
    assert gsm8k.schema_version == 0 and gsm8k.title == "GSM8K" and gsm8k.base_model is None
    assert gsm8k.metrics["exact_match"] == 0.5 and gsm8k.item_score_keys == {
        "exact_match_flexible": "exact_match,flexible-extract"}
    assert gsm8k.extra["lm_eval_version"] == "0.4.9"
    mnli_mm = Summary.read(RunFolder(RUN_V0 / "glue").summary_path("nlora-seed0", "glue_mnli_mm"))
    assert mnli_mm.title == "MNLI-mm" and mnli_mm.metric_kind == "corpus"


def test_version0_run_folders_still_report(tmp_path):
    runs = [tmp_path / "nlg", tmp_path / "glue"]
    shutil.copytree(RUN_V0, runs[0], ignore=shutil.ignore_patterns("glue"))
    shutil.copytree(RUN_V0 / "glue", runs[1])
    results = read_json(build_report(runs, tmp_path / "report", n_resamples=200) / "results.json")
    names = {benchmark["key"]: benchmark["name"] for benchmark in results["benchmarks"]}
    assert names == {"gsm8k": "GSM8K", "glue_mnli_mm": "MNLI-mm"}
    assert results["models"] == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]


def test_a_written_summary_reads_back_equal(tmp_path):
    summary = Summary(label="nlora", method="NLoRA", seed=1, benchmark="humaneval", title="HumanEval",
                      metrics={"pass@1": 0.25}, primary_metric="pass@1", metric_kind="mean", n_items=4,
                      base_model="/models/tiny", extra={"k": [1]})
    document = summary.write(tmp_path)
    assert document["schema_version"] == SCHEMA_VERSION
    assert json.loads((tmp_path / "summary.json").read_text()) == document
    assert Summary.read(tmp_path / "summary.json") == summary


@pytest.mark.parametrize(("change", "message"), [
    ({"schema_version": SCHEMA_VERSION + 1}, "is newer than this harness reads"),
    ({"metric_kind": "median"}, "metric_kind is 'median'"),
    ({"primary_metric": None}, None),
])
def test_unreadable_summaries_name_the_file_and_field(tmp_path, change, message):
    data = read_json(RunFolder(RUN_V0).summary_path("lora", "gsm8k"))
    if message is None:
        del data["primary_metric"]
        message = r"lacks the field\(s\) \['primary_metric'\]"
    else:
        data.update(change)
    with pytest.raises(SummaryError, match=message):
        Summary.from_json(data, source=tmp_path / "summary.json")
