"""LoRA adapters whose init rewrites the base weight (PiSSA, OLoRA, ...) as plain LoRA on the original base.

PiSSA/OLoRA train on a residual base ``W_res = W − s·B0·A0`` that PEFT recomputes when the adapter is
loaded; ``pissa_niter_*`` recomputes it with a *randomized* SVD, so a reloaded adapter is not the model
that was trained. Relative to the original W the fine-tune is ``s·(B·A − B0·A0)``: a rank-2r LoRA
``A' = [A; A0]``, ``B' = [B, −B0]`` whose scale is kept by doubling ``lora_alpha`` (×√2 with rsLoRA).
Stock PEFT then loads it on the untouched base and gives the trained model (up to float rounding).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_directory

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CONVERSION_RECORD = "lora_conversion.json"  # written beside a converted adapter: what it was converted from
INITIAL_ADAPTER_DIR = ".initial_adapter"  # the step-0 factors the plugin keeps until the final save


def base_rewrite(adapter_config: Mapping[str, Any]) -> str | None:
    """The init that makes PEFT rewrite the base weight when this LoRA adapter loads, or None.

    PiSSA (``pissa``, ``pissa_niter_k``), OLoRA, CorDA, EVA and LoftQ change the base (or need data or a
    quantized base to do it again); a plain ``init_lora_weights`` (True/False/gaussian/...) does not.
    """
    peft_type = adapter_config.get("peft_type", "")
    if str(getattr(peft_type, "value", peft_type)).upper() != "LORA":  # a PeftType member or its saved string
        return None
    init = adapter_config.get("init_lora_weights")
    if not isinstance(init, str):
        return None
    name = init.lower()
    if name.startswith("pissa") or name in ("olora", "corda", "eva", "loftq"):
        return init
    return None


def is_reproducible_on_load(init: str) -> bool:
    """Whether PEFT recomputes the same residual base on load (full SVD, QR) rather than a random one."""
    return init.lower() in ("pissa", "olora")


def initial_factors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The lora_A / lora_B tensors of a saved-adapter state dict, cloned to float32 on the CPU."""
    return {name: tensor.detach().to("cpu", torch.float32).clone() for name, tensor in state.items()
            if ".lora_A." in name or ".lora_B." in name}


def save_initial_adapter(state: Mapping[str, torch.Tensor], adapter_config: Mapping[str, Any],
                         folder: Path) -> None:
    """Keep the step-0 factors (and the config that made them) until the trained adapter is converted."""
    with atomic_directory(folder, overwrite=True) as staging:
        save_file(initial_factors(state), str(staging / ADAPTER_WEIGHTS))
        (staging / ADAPTER_CONFIG).write_text(json.dumps(dict(adapter_config), indent=2, default=str))


def _scale_factor(config: Mapping[str, Any]) -> float:
    """How much lora_alpha grows when r doubles so that the scale stays (2, or √2 with rsLoRA)."""
    return math.sqrt(2.0) if config.get("use_rslora") else 2.0


def converted_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The plain-LoRA config of the converted adapter: rank 2r, the same scale, no base rewrite."""
    if config.get("use_dora"):
        raise ValueError("a DoRA adapter cannot be converted to plain LoRA (its magnitude vector depends on "
                         "the residual base); evaluate it on the residual base model instead")
    factor = _scale_factor(config)
    out = dict(config)
    out["r"] = 2 * int(config["r"])
    out["lora_alpha"] = float(config["lora_alpha"]) * factor
    out["rank_pattern"] = {key: 2 * int(value) for key, value in (config.get("rank_pattern") or {}).items()}
    out["alpha_pattern"] = {key: float(value) * factor for key, value in (config.get("alpha_pattern") or {}).items()}
    out["init_lora_weights"] = True
    return out


def converted_state(trained: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """``A' = [A; A0]``, ``B' = [B, −B0]`` for every adapted layer; other tensors are kept as they are."""
    missing = sorted(name for name in trained if (".lora_A." in name or ".lora_B." in name) and name not in initial)
    if missing:
        raise ValueError(f"the initial adapter lacks {len(missing)} tensor(s) of the trained one, e.g. {missing[0]}; "
                         "it was not made by the same config")
    out = {}
    for name, tensor in trained.items():
        if ".lora_A." in name:
            out[name] = torch.cat([tensor.float(), initial[name].float()], dim=0).to(tensor.dtype).contiguous()
        elif ".lora_B." in name:
            out[name] = torch.cat([tensor.float(), -initial[name].float()], dim=1).to(tensor.dtype).contiguous()
        else:
            out[name] = tensor.contiguous()
    return out


def convert_adapter_folder(adapter: Path, initial: Path, output: Path | None = None) -> Path:
    """Rewrite the trained adapter in `adapter` (or into `output`) as plain LoRA on the original base.

    `initial` holds the step-0 adapter (its lora_A/lora_B) saved before training. Other files of the
    folder (tokenizer, README, ...) are copied; `lora_conversion.json` records what was converted.
    """
    adapter, initial = Path(adapter), Path(initial)
    output = Path(output) if output is not None else adapter
    config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    init = base_rewrite(config)
    if init is None:
        raise ValueError(f"{adapter / ADAPTER_CONFIG}: init_lora_weights={config.get('init_lora_weights')!r} does "
                         "not rewrite the base weight; the adapter is already plain LoRA")
    state = converted_state(load_file(str(adapter / ADAPTER_WEIGHTS)), load_file(str(initial / ADAPTER_WEIGHTS)))
    new_config = converted_config(config)
    with atomic_directory(output, overwrite=True) as staging:
        for path in adapter.iterdir():
            if path.is_file() and path.name not in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, "adapter_model.bin"):
                (staging / path.name).write_bytes(path.read_bytes())
        save_file(state, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(new_config, indent=2, sort_keys=True))
        record = {"converted_from": init, "original_r": config["r"], "original_lora_alpha": config["lora_alpha"],
                  "rule": "A' = [A; A0], B' = [B, -B0], r' = 2r, scale kept", "relative_to": "the original base"}
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2))
    return output


@torch.no_grad()
def recompute_initial_adapter(adapter: Path, base_model: Path, output: Path) -> Path:
    """The step-0 adapter of a deterministic init (full-SVD PiSSA, OLoRA), rebuilt from the original base.

    Randomized (``pissa_niter_k``) or data-dependent (CorDA, EVA) inits cannot be rebuilt: their
    initial adapter must have been saved when training started.
    """
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    config = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    init = base_rewrite(config)
    if init is None or not is_reproducible_on_load(init):
        raise ValueError(f"init_lora_weights={config.get('init_lora_weights')!r} cannot be recomputed from the base "
                         "(randomized or data-dependent); pass the initial adapter saved before training instead")
    model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
    lora_config = LoraConfig.from_pretrained(str(adapter))
    lora_config.inference_mode = False
    peft_model = get_peft_model(model, lora_config)
    save_initial_adapter(get_peft_model_state_dict(peft_model), config, Path(output))
    return Path(output)


__all__ = [
    "CONVERSION_RECORD",
    "INITIAL_ADAPTER_DIR",
    "base_rewrite",
    "convert_adapter_folder",
    "converted_config",
    "converted_state",
    "is_reproducible_on_load",
    "recompute_initial_adapter",
    "save_initial_adapter",
]
