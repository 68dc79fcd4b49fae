"""Run by `deepspeed --num_gpus 2` (CPU, gloo): NLoRA init of a ZeRO-3 partitioned tiny Llama.

Usage: deepspeed --num_gpus 2 zero3_init_worker.py MODEL_DIR OUT_FILE
Loads MODEL_DIR under HfDeepSpeedConfig(ZeRO-3) (every weight partitioned across the 2 ranks), applies
get_peft_model(NLoraConfig(...)) (the init gathers one base weight at a time), then gathers every
parameter and rank 0 saves {name: tensor} to OUT_FILE for comparison with the single-process init.
"""

from __future__ import annotations

import sys

import deepspeed
import torch
import torch.distributed as dist
from peft import get_peft_model
from transformers import LlamaForCausalLM
from transformers.integrations import HfDeepSpeedConfig

import nlora_plugin
from nlora_plugin.distributed import is_zero3_partitioned

# The adapter every test compares; the test builds the same config for its single-process reference.
ADAPTER = {"r": 4, "lora_alpha": 4, "target_modules": "all-linear", "nystrom_index": "pivoted",
           "residual": True, "seed": 3, "task_type": "CAUSAL_LM"}
DS_CONFIG = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
}


def main(model_dir: str, out_file: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = HfDeepSpeedConfig(DS_CONFIG)  # must stay alive while the model is built
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    assert is_zero3_partitioned(q_proj) and q_proj.numel() == 0, "ZeRO-3 did not partition the base model"
    peft_model = get_peft_model(model, nlora_plugin.NLoraConfig(**ADAPTER))
    params = dict(peft_model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        gathered = {name: param.detach().clone() for name, param in params.items()}
    if dist.get_rank() == 0:
        torch.save(gathered, out_file)
    dist.barrier()
    del ds_config


if __name__ == "__main__":
    main(*[arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")])
