"""One FSDP2 run of a tiny Llama with an NLoRA adapter (run by test_fsdp2.py, under torchrun or alone).

    torchrun --nproc-per-node 2 fsdp2_worker.py OUT CASE ORDER     (2 CPU processes, gloo)
    python fsdp2_worker.py OUT CASE single | single-init           (the single-process references)

CASE: default | residual | inttune. ORDER: `before` = get_peft_model, then fully_shard (what
accelerate/Axolotl do), `after` = fully_shard, then get_peft_model (init on DTensor-sharded weights),
`single` = no sharding (`single-init`: no training either). Every run starts from the same seeded model and trains STEPS AdamW steps on the
same global batch (each of 2 ranks takes half; FSDP2 averages the gradients), except `after` and
`single-init`, which only initialise: adapter parameters added after fully_shard are plain tensors FSDP
does not manage (their gradients would not be averaged), so an adapter added after sharding is checked
for its init and forward, and trained runs add it before. Rank 0 writes OUT/adapter.pt
(every adapter tensor, gathered), OUT/logits.pt (the trained model on the whole batch) and, from a full
state dict gathered on rank 0, a PEFT adapter folder OUT/saved.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import nlora_plugin  # noqa: F401  (registers NLoRA with PEFT)
from nlora_plugin import NLoraConfig

STEPS = 3
CASES = {
    "default": {},
    "residual": {"residual": True, "nystrom_index": "pivoted", "nystrom_core": "optimal"},
    "inttune": {"train_only_intermediate": True},
}


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).float()


def batch() -> torch.Tensor:
    return torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))


def peft_config(case: str) -> NLoraConfig:
    return NLoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"], **CASES[case])


def shard(model: torch.nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers if hasattr(model, "model") and hasattr(model.model, "layers") else \
            model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main() -> None:
    out, case, order = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    distributed = order in ("before", "after")
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    model = tiny_model()
    if order == "after":
        shard(model)
    model = get_peft_model(model, peft_config(case))
    if order == "before":
        shard(model)
    ids = batch()
    mine = ids.chunk(world)[rank]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    for _ in range(STEPS if order in ("before", "single") else 0):
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adapter = {name: full(p.detach()).clone() for name, p in model.named_parameters() if "lora_" in name}
    with torch.no_grad():
        logits = full(model(input_ids=ids).logits)
    state = None
    if distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(adapter, out / "adapter.pt")
        torch.save(logits, out / "logits.pt")
        model.save_pretrained(out / "saved", state_dict=state)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
