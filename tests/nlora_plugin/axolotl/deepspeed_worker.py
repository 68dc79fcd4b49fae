"""Run by `deepspeed --num_gpus 2` (CPU, gloo): IntTune init and 3 training steps under ZeRO-2 or ZeRO-3.

Usage: deepspeed --num_gpus 2 deepspeed_worker.py STAGE MODEL_DIR OUT_PREFIX
Stage 3 loads MODEL_DIR under HfDeepSpeedConfig, so every base weight is partitioned across the two
ranks and the Nyström init must gather one layer at a time. Each rank saves OUT_PREFIX.rank{R}.pt with
the gathered parameters right after get_peft_model ("init"), the losses, and the gathered parameters
after 3 AdamW steps on one fixed batch ("trained").
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

# The adapter the test also builds in one process for its reference (IntTune: only lora_N trains).
ADAPTER = {"r": 4, "lora_alpha": 4, "target_modules": "all-linear", "nystrom_index": "pivoted",
           "residual": True, "train_only_intermediate": True, "seed": 3, "task_type": "CAUSAL_LM"}
STEPS = 3


def ds_config(stage: int) -> dict:
    return {
        "zero_optimization": {"stage": stage, **({"stage3_param_persistence_threshold": 0} if stage == 3 else {})},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.0, "torch_adam": True}},
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
    }


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: param.detach().clone() for name, param in params.items()}


def main(stage: str, model_dir: str, out_prefix: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    config = ds_config(int(stage))
    hf_ds_config = HfDeepSpeedConfig(config)  # noqa: F841  must stay alive while the model is built
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    assert is_zero3_partitioned(q_proj) == (stage == "3"), "ZeRO-3 partitioning not as expected"
    peft_model = get_peft_model(model, nlora_plugin.NLoraConfig(**ADAPTER))
    init = gathered(peft_model)
    engine, *_ = deepspeed.initialize(
        model=peft_model, model_parameters=[p for p in peft_model.parameters() if p.requires_grad], config=config
    )
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(STEPS):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    torch.save({"init": init, "trained": gathered(engine.module), "losses": losses},
               f"{out_prefix}.rank{dist.get_rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    main(*[arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")])
