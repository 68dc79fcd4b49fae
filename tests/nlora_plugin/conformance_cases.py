"""The cases of the PEFT conformance matrix: every NLoRA option on an nn.Linear and a Conv1D model.

A row that deviates from what PEFT expects of a method *by design* is listed in ``BY_DESIGN`` with its
reason; its test id ends in ``[by-design]`` and the test asserts the designed behaviour instead, so
``pytest --collect-only -q tests/nlora_plugin/test_conformance.py | grep -c by-design`` counts them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from nlora_plugin import NLoraConfig

VOCAB = 64
R = 4

CASES: dict[str, dict] = {
    "nlora": {},  # the authors' default: first r indices, N = A_W, no residual
    "core-pinv": {"nystrom_core": "pinv"},
    "core-optimal": {"nystrom_core": "optimal"},
    "index-random": {"nystrom_index": "random", "seed": 5},
    "index-pivoted": {"nystrom_index": "pivoted"},
    "residual": {"residual": True},
    "residual-optimal-pivoted": {"residual": True, "nystrom_core": "optimal", "nystrom_index": "pivoted"},
    "slora": {"init_method": "slora"},
    "slora-gaussian": {"init_method": "slora", "slora_n_init": "gaussian"},
    "inttune": {"train_only_intermediate": True},
}

MOVES_OUTPUT_AT_INIT = (
    "NLoRA without residual adds B·N·A on top of the frozen W from step 0, as the authors' code does "
    "(paper §3; DESIGN §1): the output at init is not the base model's"
)
INTTUNE_FROZEN = (
    "IntTune (paper §4.3) trains only N: lora_A and lora_B stay frozen whatever requires_grad asks, with a "
    "one-time warning"
)
BASE_STATE_IS_RESIDUAL = (
    "residual mode rewrites W to W - scale·B0·N0·A0 (as PEFT's PiSSA/OLoRA do): get_base_model_state_dict "
    "returns that residual; nlora_plugin.model.original_base_state_dict gives the original weights"
)
RESIDUALS_STACK = (
    "a second residual adapter is initialised from the weight the first one left (W - P_default), as a second "
    "PiSSA adapter in PEFT is: saved alone, it reproduces the model when loaded beside the first adapter"
)
PINV_IN_HALF = (
    "nystrom_core: pinv makes scale·B·N·A 10-100× W on these models (paper §3's pseudo-inverse of a near-singular "
    "r×r block): one bf16/fp16 rounding of W + delta is larger than W itself, so half-precision outputs are "
    "not the float32 ones; the step-0 warning tells the user, and pinv is checked in float32"
)
NON_RESIDUAL = ("nlora", "core-pinv", "core-optimal", "index-random", "index-pivoted", "inttune")
BY_DESIGN: dict[tuple[str, str], str] = {
    **{("identity_at_init", case): MOVES_OUTPUT_AT_INIT for case in NON_RESIDUAL},
    ("requires_grad", "inttune"): INTTUNE_FROZEN,
    ("only_adapter_parameters_update", "inttune"): INTTUNE_FROZEN,
    ("base_model_state_dict", "residual"): BASE_STATE_IS_RESIDUAL,
    ("base_model_state_dict", "residual-optimal-pivoted"): BASE_STATE_IS_RESIDUAL,
    **{(category, "core-pinv"): PINV_IN_HALF for category in ("half_precision_forward", "merge_half", "autocast")},
    ("save_selected_adapters", "residual"): RESIDUALS_STACK,
    ("save_selected_adapters", "residual-optimal-pivoted"): RESIDUALS_STACK,
}


def linear_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A 2-block Llama (hidden 32): every projection is an nn.Linear. Weights of std 0.2, so B·N·A is visible."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, initializer_range=0.2)
    return LlamaForCausalLM(config).to(dtype).eval()


def conv1d_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A 2-block GPT-2 (hidden 32): c_attn, c_proj, c_fc are transformers Conv1D (weight stored in × out)."""
    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32, initializer_range=0.2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).to(dtype).eval()


MODELS: dict[str, Callable[..., PreTrainedModel]] = {"linear": linear_model, "conv1d": conv1d_model}
TARGETS = {"linear": "all-linear", "conv1d": ["c_attn", "c_proj", "c_fc"]}


def nlora_config(case: str, kind: str, **overrides) -> NLoraConfig:
    return NLoraConfig(**{"r": R, "lora_alpha": 2 * R, "target_modules": TARGETS[kind], "task_type": "CAUSAL_LM",
                          **CASES[case], **overrides})


def matrix(category: str) -> list:
    """pytest params (case, kind) for one check category; by-design rows carry '[by-design]' in their id."""
    return [
        pytest.param(case, kind, id=f"{case}-{kind}" + ("[by-design]" if (category, case) in BY_DESIGN else ""))
        for case in CASES
        for kind in MODELS
    ]
