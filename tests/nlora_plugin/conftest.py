"""Tiny models built in-process for the core tests."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, init_range: float = 0.02) -> LlamaForCausalLM:
    """A 2-block Llama (hidden 64) with random weights (std `init_range`)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=101,
        max_position_embeddings=64,
        initializer_range=init_range,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer BERT classifier (hidden 48)."""
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=120,
        num_labels=2,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(1))
