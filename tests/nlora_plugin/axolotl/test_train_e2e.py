"""`axolotl train` on the shipped tiny recipes (real CLI, subprocess), then load, merge and inspect the adapter."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from nlora_plugin import NLoraConfig  # registers the NLORA PEFT type for from_pretrained

from .conftest import DEEPSPEED_CONFIGS, VENV_BIN, subprocess_env, tiny_recipe
from .logits_probe import PROBE_FILE, PROBE_IDS

PROBE_PLUGIN = "tests.nlora_plugin.axolotl.logits_probe.LogitsProbePlugin"

pytestmark = pytest.mark.slow


def axolotl_train(config: Path, log: Path, *launcher: str) -> Path:
    """Run `axolotl train CONFIG [LAUNCHER ARGS]` as a user would; returns output_dir."""
    with log.open("w") as handle:
        result = subprocess.run([str(VENV_BIN / "axolotl"), "train", str(config), *launcher], cwd=config.parent,
                                env=subprocess_env(), stdout=handle, stderr=subprocess.STDOUT, timeout=480, check=False)
    assert result.returncode == 0, f"axolotl train failed; last lines:\n{log.read_text()[-3000:]}"
    return config.parent / "out"


def base(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def adapter_weights(model: torch.nn.Module, matrix: str) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if f".{matrix}." in name}


def initial_adapter(model_dir: Path, adapter_dir: Path) -> torch.nn.Module:
    """The step-0 adapter: get_peft_model with the saved config on the untouched base."""
    config = NLoraConfig.from_pretrained(adapter_dir)
    config.inference_mode = False
    return get_peft_model(base(model_dir), config)


def batch(model_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer(["Natalia sold clips to 48 of her friends in April."], return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def nlora_run(tiny_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("axolotl-nlora")
    plugins = ["nlora_plugin.axolotl.NLoraPlugin", PROBE_PLUGIN]  # the probe records the trained model
    return axolotl_train(tiny_recipe("tiny-nlora.yaml", tiny_decoder, work, plugins=plugins), work / "train.log")


@pytest.fixture(scope="module")
def inttune_run(tiny_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IntTune under DeepSpeed ZeRO-3 with 2 CPU processes (torchrun, gloo), with the shipped zero3.json.

    On a CPU-only machine the HF Trainer of every rank believes it is the main process, so without the
    plugin's guard rank 1 writes adapter_model.safetensors from its own shards (empty tensors) over rank 0's
    gathered file. The adapter matrices are partitioned too here, so the file loads only if rank 0 alone
    wrote it; the base weights stay partitioned and the init must gather them (the plugin's log line).
    """
    work = tmp_path_factory.mktemp("axolotl-inttune")
    config = tiny_recipe("tiny-inttune.yaml", tiny_decoder, work,
                         deepspeed=str(DEEPSPEED_CONFIGS / "zero3.json"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return axolotl_train(config, work / "train.log", "--launcher", "torchrun", "--",
                         "--nproc_per_node", "2", "--master_port", str(port))


def test_nlora_adapter_loads_trains_and_merges(nlora_run: Path, tiny_decoder: Path) -> None:
    saved = json.loads((nlora_run / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["init_method"], saved["train_only_intermediate"]) == ("NLORA", "nlora", False)
    assert (nlora_run / "adapter_model.safetensors").exists()
    model = PeftModel.from_pretrained(base(tiny_decoder), nlora_run).eval()
    start = initial_adapter(tiny_decoder, nlora_run)
    for matrix in ("lora_A", "lora_N", "lora_B"):  # NLoRA trains all three
        trained, initial = adapter_weights(model, matrix), adapter_weights(start, matrix)
        assert len(trained) == 14
        assert any(not torch.equal(trained[name], initial[name]) for name in trained), matrix
    ids = batch(tiny_decoder)
    with torch.no_grad():
        unmerged = model(ids).logits
        merged = model.merge_and_unload()(ids).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_saved_adapter_reproduces_the_trained_model(nlora_run: Path, tiny_decoder: Path) -> None:
    """The adapter on disk, reloaded with stock PEFT, gives the logits the in-memory trained model gave."""
    probe = torch.load(nlora_run / PROBE_FILE)
    assert {name.split(".")[-3] for name in probe["trainable"]} == {"lora_A", "lora_N", "lora_B"}
    ids = torch.tensor(PROBE_IDS)
    with torch.no_grad():
        reloaded = PeftModel.from_pretrained(base(tiny_decoder), nlora_run).eval()(ids).logits
        untouched = base(tiny_decoder)(ids).logits
    torch.testing.assert_close(reloaded, probe["logits"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(untouched, probe["logits"], atol=1e-4)  # training (and the init) moved the model


def test_axolotl_merge_lora_matches_the_adapter(nlora_run: Path, tiny_decoder: Path) -> None:
    """`axolotl merge-lora` (merge_method: legacy, in-process) writes output_dir/merged = base + adapter."""
    from axolotl.cli.merge_lora import do_cli

    do_cli(config=str(nlora_run.parent / "tiny-nlora.yaml"))
    merged = base(nlora_run / "merged")
    model = PeftModel.from_pretrained(base(tiny_decoder), nlora_run).eval()
    ids = batch(tiny_decoder)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(base(tiny_decoder)(ids).logits, merged(ids).logits, atol=1e-6)


def test_inttune_under_zero3_trains_only_the_middle_matrix(inttune_run: Path, tiny_decoder: Path) -> None:
    log = (inttune_run.parent / "train.log").read_text()
    assert "ZeRO-3: " in log and "base parameters are partitioned" in log  # the gathered init really ran
    assert "rank 1: not writing" in log  # the write is left to rank 0 (the gather ran on both)
    saved = json.loads((inttune_run / "adapter_config.json").read_text())
    assert (saved["init_method"], saved["train_only_intermediate"]) == ("nlora", True)
    model = PeftModel.from_pretrained(base(tiny_decoder), inttune_run)
    start = initial_adapter(tiny_decoder, inttune_run)
    for matrix in ("lora_A", "lora_B"):  # frozen: exactly the Nyström init
        trained, initial = adapter_weights(model, matrix), adapter_weights(start, matrix)
        assert trained.keys() == initial.keys() and trained
        assert all(torch.equal(trained[name], initial[name]) for name in trained), matrix
    trained_n, initial_n = adapter_weights(model, "lora_N"), adapter_weights(start, "lora_N")
    assert all(not torch.equal(trained_n[name], initial_n[name]) for name in trained_n)
