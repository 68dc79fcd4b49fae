"""Exact conversion of an NLoRA adapter to a plain PEFT LoRA adapter, and merged checkpoints.

Servers and LoRA tools reject unknown tensors such as ``lora_N`` (vllm-project/vllm#21500), so the
export folds N into A: ``B·N·A = B·(N·A)`` with ``A' = N·A`` in torch layout, exact because the base
weight is untouched. In residual mode the base weight was W − s·B0·N0·A0; relative to the original W
the fine-tune is s·(B·N·A − B0·N0·A0), a rank-2r LoRA: ``A' = [N·A; −N0·A0]``, ``B' = [B, B0]`` with
``lora_alpha`` doubled so that alpha'/r' keeps the scale s (as PEFT's PiSSA-to-LoRA conversion does).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from .atomic import atomic_directory
from .config import NLoraConfig
from .layer import NLoraLayer

SAFETENSORS_NAME = "adapter_model.safetensors"
NAMES_SHOWN = 5


class NonFiniteWeights(ValueError):
    """Tensors that hold NaN or Inf: no adapter or checkpoint is written from them."""


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteWeights naming the first tensors of `tensors` that hold NaN/Inf (and how many)."""
    bad = [name for name, tensor in tensors.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        shown = ", ".join(bad[:NAMES_SHOWN]) + (f" and {len(bad) - NAMES_SHOWN} more" if len(bad) > NAMES_SHOWN else "")
        raise NonFiniteWeights(f"{what}: {len(bad)} tensor(s) hold NaN or Inf ({shown}); nothing was written. "
                               "The training diverged or the file is damaged: retrain (lower the learning rate, "
                               "use bf16/fp32) or use an earlier checkpoint")


def lora_config_for(config: NLoraConfig, residual_layers: bool, fan_in_fan_out: bool) -> LoraConfig:
    """The plain LoRA config whose adapter reproduces `config`'s (rank and alpha doubled for residual)."""
    factor = 2 if residual_layers else 1
    return LoraConfig(
        r=config.r * factor,
        lora_alpha=config.lora_alpha * factor,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        exclude_modules=config.exclude_modules,
        bias=config.bias,
        modules_to_save=config.modules_to_save,
        layers_to_transform=config.layers_to_transform,
        layers_pattern=config.layers_pattern,
        fan_in_fan_out=fan_in_fan_out,
        task_type=config.task_type,
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
    )


def _layer_prefixes(model: PeftModel, adapter_name: str) -> dict[str, NLoraLayer]:
    """Saved-key prefix ("base_model.model.<path>.": a PeftModel's module names) of every NLoRA layer that
    holds `adapter_name`."""
    return {f"{name}.": module for name, module in model.named_modules()
            if isinstance(module, NLoraLayer) and adapter_name in module.lora_A}


@torch.no_grad()
def lora_state_dict(model: PeftModel, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's saved tensors with every lora_N folded into lora_A (and the residual appended)."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    converted = {key: value for key, value in state.items() if ".lora_" not in key}
    for prefix, layer in _layer_prefixes(model, adapter_name).items():
        lora_A = state[f"{prefix}lora_A.weight"].float()
        lora_N = state[f"{prefix}lora_N.weight"].float()
        lora_B = state[f"{prefix}lora_B.weight"].float()
        folded_A = lora_N @ lora_A
        if adapter_name in layer.residual_adapters():
            initial_A = layer.residual_N[adapter_name].float() @ layer.residual_A[adapter_name].float()
            folded_A = torch.cat([folded_A, -initial_A.to(folded_A.device)], dim=0)
            lora_B = torch.cat([lora_B, layer.residual_B[adapter_name].float().to(lora_B.device)], dim=1)
        dtype = state[f"{prefix}lora_A.weight"].dtype
        converted[f"{prefix}lora_A.weight"] = folded_A.to(dtype).contiguous().cpu()
        converted[f"{prefix}lora_B.weight"] = lora_B.to(dtype).contiguous().cpu()
    return converted


def export_lora(
    model: PeftModel, output_dir: Path | str, adapter_name: str = "default", overwrite: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write `adapter_name` of an NLoRA PeftModel as a plain PEFT LoRA adapter folder (exact).

    The folder loads with stock ``peft`` (no nlora_plugin import) and gives the same outputs.
    `verify(staging_dir)` runs on the complete folder before it appears at `output_dir`; if it raises,
    nothing is left at `output_dir` (an existing folder there is kept as it was). Adapter tensors with
    NaN/Inf raise NonFiniteWeights before anything is written.
    """
    config = model.peft_config[adapter_name]
    if not isinstance(config, NLoraConfig):
        raise TypeError(f"adapter {adapter_name!r} is a {type(config).__name__}, not an NLoRA adapter")
    layers = _layer_prefixes(model, adapter_name).values()
    residual = any(adapter_name in layer.residual_adapters() for layer in layers)
    fan_in_fan_out = any(layer.fan_in_fan_out for layer in layers)
    lora_config = lora_config_for(config, residual, fan_in_fan_out)
    check_finite(get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False),
                 f"adapter {adapter_name!r}")
    tensors = lora_state_dict(model, adapter_name)
    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        save_file(tensors, str(staging / SAFETENSORS_NAME), metadata={"format": "pt"})
        lora_config.save_pretrained(str(staging))
        if verify is not None:
            verify(staging)
    return output_dir


def save_merged(
    model: PeftModel, output_dir: Path | str, overwrite: bool = False, extra_files: Sequence[Path] = ()
) -> Path:
    """Merge the active adapter into the base weights and save a plain transformers checkpoint.

    `extra_files` (e.g. the base's tokenizer files) are copied in before the folder appears. Weights
    with NaN/Inf (in the adapter, or produced by the merge) raise NonFiniteWeights before anything is written.
    """
    check_finite({n: p for n, p in model.named_parameters() if "lora_" in n}, "the adapter")
    merged = model.merge_and_unload()
    check_finite(dict(merged.named_parameters()), "the merged model")
    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        merged.save_pretrained(str(staging))
        for path in extra_files:
            shutil.copy2(path, staging / Path(path).name)
    return output_dir
