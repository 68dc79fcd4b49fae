"""Exact evaluation: the model scored is the model trained, an adapter that does nothing is refused, and the
report says when compared methods were trained on different budgets (or are different configurations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import nlora_plugin
from eval_harness.cli import main
from eval_harness.errors import ConfigError
from eval_harness.eval_yaml import load_config
from eval_harness.models import ModelHandle
from eval_harness.report import build_report
from eval_harness.results import atomic_write_json
from eval_harness.run_folder import MODEL_RECORD, RunFolder
from eval_harness.runner import record_model
from tests.fixtures.report.synthetic import binary_scores, write_mean_result, write_run_json

from .conftest import TARGETS, tiny_config, write_yaml

IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 2731, 102]])


def base_model(tiny_root: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(tiny_root / "base"), dtype=torch.float32)


@torch.no_grad()
def fake_training(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every trainable adapter tensor, as a few optimizer steps would."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad:
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


@torch.no_grad()
def train_and_save(tiny_root: Path, peft_config, folder: Path) -> torch.Tensor:
    """get_peft_model + fake training + save_pretrained; returns the trained model's logits on IDS."""
    model = get_peft_model(base_model(tiny_root), peft_config)
    fake_training(model)
    model.eval()
    logits = model(input_ids=IDS).logits.float()
    model.save_pretrained(folder)
    return logits


def harness_logits(folder: Path, adapter: Path, **entry) -> torch.Tensor:
    """The adapter loaded exactly as `eval-harness run` loads it (YAML checked, then ModelHandle.model)."""
    path = write_yaml(folder, tiny_config(models=[{"label": "m", "adapter": str(adapter), **entry}]))
    config = load_config(path)
    with torch.no_grad():
        return ModelHandle.from_entry(config.models[0], config).model(input_ids=IDS).logits.float()


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / float(b.abs().max())


OPTIONS = [{"nystrom_index": index, "nystrom_core": core} for index in ("first", "random", "pivoted")
           for core in ("sample", "pinv", "optimal")]
OPTIONS += [{"residual": True}, {"residual": True, "nystrom_index": "pivoted", "nystrom_core": "optimal"},
            {"init_method": "slora"}, {"train_only_intermediate": True}]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_every_nlora_option_reloads_as_trained(options, eval_dir, tiny_root, tmp_path):
    config = nlora_plugin.NLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM", **options)
    trained = train_and_save(tiny_root, config, tmp_path / "adapter")
    assert relative_difference(harness_logits(eval_dir, tmp_path / "adapter"), trained) <= 1e-5


def test_check_refuses_an_unconverted_randomized_pissa_adapter(eval_dir, tiny_root, tmp_path, capsys):
    train_and_save(tiny_root, LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="pissa_niter_2"),
                   tmp_path / "pissa")
    path = write_yaml(eval_dir, tiny_config(models=[{"label": "pissa", "adapter": str(tmp_path / "pissa")}]))
    assert main(["check", str(path)]) == 2
    message = capsys.readouterr().err
    assert "init_lora_weights='pissa_niter_2'" in message and "randomized SVD" in message
    assert "nlora convert-lora --adapter" in message and "--initial-adapter" in message


def test_convert_lora_makes_a_full_svd_pissa_adapter_exact(eval_dir, tiny_root, tmp_path, capsys):
    from nlora_plugin.cli import main as nlora_main

    trained = train_and_save(tiny_root, LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="pissa"),
                             tmp_path / "pissa")
    with pytest.raises(ConfigError, match="--base <the original base model>"):
        harness_logits(eval_dir, tmp_path / "pissa")
    assert nlora_main(["convert-lora", "--adapter", str(tmp_path / "pissa"), "--base", str(tiny_root / "base"),
                       "--output", str(tmp_path / "pissa-lora")]) == 0
    assert "convert check passed" in capsys.readouterr().out
    assert relative_difference(harness_logits(eval_dir, tmp_path / "pissa-lora"), trained) <= 1e-5
    assert load_config(write_yaml(eval_dir, tiny_config(models=[
        {"label": "p", "adapter": str(tmp_path / "pissa-lora")}]))).models[0].method == "PiSSA"


def test_an_adapter_that_changes_nothing_fails_the_run(eval_dir, tiny_root, tmp_path, capsys):
    get_peft_model(base_model(tiny_root), LoraConfig(r=4, target_modules=TARGETS)).save_pretrained(tmp_path / "noop")
    path = write_yaml(eval_dir, tiny_config(models=[{"label": "noop", "adapter": str(tmp_path / "noop")}]))
    assert main(["run", str(path), "--output", str(tmp_path / "run")]) == 2
    assert "does not change the model's output" in capsys.readouterr().err
    assert not (tmp_path / "run" / "noop" / "gsm8k").exists()  # refused before any benchmark work
    harness_logits(eval_dir, tmp_path / "noop", expect_identity=True)  # declared: accepted
    with pytest.raises(ConfigError, match="expect_identity: true, but the adapter changes the output"):
        harness_logits(eval_dir, tiny_root / "lora", expect_identity=True)


def test_an_adapter_tensor_that_matches_no_module_is_refused(eval_dir, tiny_root, tmp_path):
    train_and_save(tiny_root, LoraConfig(r=4, target_modules=TARGETS), tmp_path / "mine")
    weights = tmp_path / "mine" / "adapter_model.safetensors"
    state = load_file(str(weights))
    name = next(key for key in state if "layers.1.self_attn.q_proj.lora_A" in key)
    state[name.replace("layers.1", "layers.7")] = state.pop(name)  # a layer the base model does not have
    save_file(state, str(weights))
    with pytest.raises(ConfigError, match="does not fit this base model: 1 adapter tensor"):
        harness_logits(eval_dir, tmp_path / "mine")


def test_model_json_records_the_adapter_and_refuses_a_changed_one_on_resume(eval_dir, tiny_root, tmp_path):
    import shutil

    shutil.copytree(tiny_root / "lora", tmp_path / "mine")
    config = load_config(write_yaml(eval_dir, tiny_config(models=[{"label": "l", "adapter": str(tmp_path / "mine")}])))
    record = record_model(config.models[0], config, RunFolder(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "l" / MODEL_RECORD).read_text())
    assert saved == record and len(saved["provenance"]["adapter_sha256"]) == 64
    assert saved["provenance"]["adapter_config"]["r"] == 4 and "base_model_name_or_path" not in \
        saved["provenance"]["adapter_config"]
    config_file = tmp_path / "mine" / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace('"r": 4', '"r": 4 '))
    with pytest.raises(ConfigError, match="adapter_sha256 differs"):
        record_model(config.models[0], config, RunFolder(tmp_path / "run"))


# ---------------------------------------------------------------- the report: budgets and configurations


def budget_record(label: str, method: str, *, samples: int = 96, lr: float = 2e-4, r: int = 8,
                  residual: bool = False, intended: tuple[str, ...] = ()) -> dict:
    """A model.json as `eval-harness run` writes it, for an adapter trained with the given budget."""
    steps = samples // 4
    return {"label": label, "method": method, "seed": None, "expect_identity": False,
            "intended_differences": list(intended), "probe": {"relative_delta": 0.1, "max_abs_delta_logit": 0.1,
                                                              "logit_scale": 1.0},
            "provenance": {"adapter": f"/adapters/{label}", "adapter_sha256": "0" * 64, "base_config_sha256": "1" * 64,
                           "adapter_config": {"r": r, "lora_alpha": r, "residual": residual,
                                              "target_modules": ["v_proj", "q_proj"]},
                           "conversion": None, "init_diagnostics": None,
                           "training": {"learning_rate": lr, "lr_scheduler": "cosine", "warmup_ratio": 0.03,
                                        "micro_batch_size": 4, "gradient_accumulation_steps": 1, "world_size": 1,
                                        "effective_batch_size": 4, "steps": steps, "samples": samples, "r": r,
                                        "lora_alpha": r}}}


def write_runs(run_dir: Path, records: list[dict], seed_of: dict[str, int] | None = None) -> Path:
    rng = np.random.default_rng(0)
    seed_of = seed_of or {}
    write_run_json(run_dir, [(r["label"], r["method"], seed_of.get(r["label"])) for r in records])
    for record in records:
        write_mean_result(run_dir, record["label"], record["method"], seed_of.get(record["label"]), "gsm8k",
                          binary_scores(0.5, 200, rng))
        atomic_write_json(run_dir / record["label"] / MODEL_RECORD, record)
    return run_dir


def report_markdown(tmp_path: Path, records: list[dict], baseline: str | None = "LoRA", **kwargs) -> tuple[str, dict]:
    out = build_report([write_runs(tmp_path / "run", records, **kwargs)], tmp_path / "report", baseline=baseline,
                       n_resamples=200)
    return (out / "report.md").read_text(), json.loads((out / "results.json").read_text())


def test_unequal_budgets_are_flagged_in_the_table_and_above_it(tmp_path):
    run = write_runs(tmp_path / "run", [budget_record("lora", "LoRA", samples=512),
                                        budget_record("nlora", "NLoRA", samples=96)])
    assert main(["report", str(run), "--output", str(tmp_path / "report"), "--baseline", "LoRA"]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["table"]["NLoRA"]["budget_flags"][0]["field"] == "samples"
    assert "⚠ samples 96 vs 512" in markdown
    assert "Warning: Unequal budgets: NLoRA vs LoRA: samples 96 vs 512" in markdown
    assert "## Training budget" in markdown and "4×1×1 = 4" in markdown


def test_equal_or_declared_budgets_are_not_flagged(tmp_path):
    markdown, results = report_markdown(tmp_path, [budget_record("lora", "LoRA"), budget_record("nlora", "NLoRA"),
                                                   budget_record("it", "IntTune", lr=2e-3, intended=("learning_rate",))])
    assert all(not row["budget_flags"] for row in results["table"].values())
    assert "Unequal budgets" not in markdown and "⚠ learning_rate" not in markdown
    assert markdown.count(" | same |") == 3


def test_different_configurations_are_rows_and_seeds_of_one_are_pooled(tmp_path):
    records = [budget_record("lora", "LoRA"), budget_record("nlora-a0", "NLoRA"), budget_record("nlora-a1", "NLoRA"),
               budget_record("nlora-b", "NLoRA", residual=True)]
    records[2]["provenance"]["adapter_config"]["target_modules"] = ["q_proj", "v_proj"]  # same set, other order
    markdown, results = report_markdown(tmp_path, records, seed_of={"nlora-a0": 0, "nlora-a1": 1})
    assert set(results["table"]) == {"LoRA", "NLoRA [residual=False]", "NLoRA [residual=True]"}
    assert results["table"]["NLoRA [residual=False]"]["benchmarks"]["gsm8k"]["n_seeds"] == 2
    assert "Rows: 2 different configurations were labelled 'NLoRA'" in markdown


def test_loss_curves_of_axolotl_adapters_are_plotted_and_do_not_split_seeds(tmp_path):
    """training_settings.json's loss_curve (written by the plugin) reaches the loss plot and table; it is an
    outcome, not a setting, so two seeds with different curves stay one row."""
    records = [budget_record("lora", "LoRA"), budget_record("nlora-0", "NLoRA"), budget_record("nlora-1", "NLoRA")]
    for record, curve in zip(records, ([[1, 1.0], [2, 0.8], [3, 0.7]], [[1, 1.0], [2, 9.0], [3, 4.0]],
                                       [[1, 1.0], [2, 7.0], [3, 2.0]])):
        record["provenance"]["training"]["loss_curve"] = curve
    markdown, results = report_markdown(tmp_path, records, seed_of={"nlora-0": 0, "nlora-1": 1})
    assert set(results["table"]) == {"LoRA", "NLoRA"}
    nlora = results["loss_curves"]["NLoRA"]
    assert nlora["n_seeds"] == 2 and nlora["mean"] == pytest.approx([1.0, 8.0, 3.0])
    assert "## Training loss" in markdown and "| NLoRA | 2 | 1–3 | 1.000 | 8.000 | 3.000 |" in markdown
    assert (tmp_path / "report" / "loss_curves.png").stat().st_size > 0
    assert "## Efficiency" not in markdown  # no training.json: no efficiency figures to show


def test_a_baseline_that_names_two_configurations_is_refused(tmp_path):
    from eval_harness.report import ReportError

    with pytest.raises(ReportError, match="baseline 'LoRA' names 2 different configurations"):
        report_markdown(tmp_path, [budget_record("a", "LoRA", r=8), budget_record("b", "LoRA", r=16)])


def test_runs_from_different_generation_backends_are_not_pooled(tmp_path):
    """vLLM and HF generate the same tokens in float32 but not in bf16: their runs are different rows."""
    runs = []
    for backend in ("hf", "vllm"):
        run = write_runs(tmp_path / backend, [budget_record(f"nlora-{backend}", "NLoRA")],
                         seed_of={f"nlora-{backend}": 0})
        data = json.loads((run / "run.json").read_text())
        data["config"]["generation"] = {"backend": backend}
        (run / "run.json").write_text(json.dumps(data))
        runs.append(run)
    out = build_report(runs, tmp_path / "report", n_resamples=200)
    rows = set(json.loads((out / "results.json").read_text())["table"])
    assert rows == {"NLoRA [backend=hf]", "NLoRA [backend=vllm]"}


def test_gsm8k_flexible_extract_gets_a_confidence_interval(tmp_path):
    """Its per-item scores are in items.jsonl ("scores"), so the report must not say "no items: no CI"."""
    run = tmp_path / "run"
    write_run_json(run, [("lora", "LoRA", None)])
    rng = np.random.default_rng(0)
    strict, flexible = binary_scores(0.3, 200, rng), binary_scores(0.6, 200, rng)
    folder = run / "lora" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "items.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "score": s, "scores": {"exact_match,strict-match": s,
                                                          "exact_match,flexible-extract": f}}) + "\n"
        for i, (s, f) in enumerate(zip(strict, flexible))))
    atomic_write_json(folder / "summary.json", {
        "label": "lora", "method": "LoRA", "seed": None, "benchmark": "gsm8k", "primary_metric": "exact_match",
        "metrics": {"exact_match": float(strict.mean()), "exact_match_flexible": float(flexible.mean())},
        "metric_kind": "mean", "item_score_keys": {"exact_match_flexible": "exact_match,flexible-extract"}})
    out = build_report([run], tmp_path / "report", n_resamples=200)
    cell = json.loads((out / "results.json").read_text())["all_metrics"]["gsm8k"]["LoRA"]["exact_match_flexible"]
    assert cell["ci_low"] < flexible.mean() < cell["ci_high"] and cell["n_items"] == [200]
    assert "no items: no CI" not in (out / "report.md").read_text()
