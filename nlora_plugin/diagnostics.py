"""Step-0 diagnostics: how much a new NLoRA adapter changes each layer's weight before any training.

With the authors' init (N = A_W, no residual) the adapter adds scale·B·N·A, built from W's own rows and
columns, on top of the unchanged W, so the model at step 0 is not the pretrained one. How far it moves
depends on the weights' scale: on SmolLM2-135M it broke the model (training loss 0.93 -> 13.3 at step 0).
The measure, per adapted layer, is ‖ΔW‖_F / ‖W‖_F with ΔW the change of the layer's effective weight at
step 0 (scale·B·N·A; 0 in residual mode, where W_res + scale·B·N·A = W). It costs O((in + out)·r²):
‖B·N·A‖²_F = Σ (BᵀB) ⊙ (N·A·Aᵀ·Nᵀ), never forming the out×in product.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

import torch
from torch import nn

from .distributed import is_dtensor, is_zero3_partitioned

logger = logging.getLogger(__name__)

MEASURE = "||scale*B*N*A||_F / ||W||_F"
# Above this the step-0 model is treated as damaged. Chosen from measurements (README, "Which reading is the
# default"): the authors' init gives ≤ 0.03 on tiny/MiniLM-style weights, where training recovers, and
# ~1 (the update as large as W) on SmolLM2-135M, where it broke the model.
WARN_THRESHOLD = 0.1
WORST_LAYERS = 3


def _unavailable(*tensors: torch.Tensor) -> bool:
    """Shapes only (meta) or sharded (ZeRO-3 / FSDP2): the figures cannot be read on this rank."""
    return any(t.is_meta or is_zero3_partitioned(t) or is_dtensor(t) for t in tensors)


@torch.no_grad()
def relative_update(layer: Any, adapter_name: str) -> float | None:
    """‖ΔW‖_F / ‖W‖_F of one NLoRA layer at step 0, or None when its tensors are not all here."""
    lora_a = layer.lora_A[adapter_name].weight
    lora_n = layer.lora_N[adapter_name].weight
    lora_b = layer.lora_B[adapter_name].weight
    weight = layer.get_base_layer().weight
    if _unavailable(lora_a, lora_n, lora_b, weight):
        return None
    if adapter_name in layer.residual_adapters():
        return 0.0  # W was replaced by W − scale·B·N·A: the sum is the pretrained weight
    a, n, b = lora_a.float(), lora_n.float(), lora_b.float()
    squared = ((b.T @ b) * (n @ (a @ a.T) @ n.T)).sum().clamp_min(0.0)
    delta = abs(float(layer.scaling[adapter_name])) * math.sqrt(float(squared))
    return delta / max(float(torch.linalg.vector_norm(weight, dtype=torch.float32)), 1e-30)


def measure(model: nn.Module, adapter_name: str, layer_type: type) -> dict[str, Any] | None:
    """The step-0 figures of `adapter_name` over every layer of `layer_type` (the schema saved in the config)."""
    ratios = {}
    for name, module in model.named_modules():
        if isinstance(module, layer_type) and adapter_name in module.lora_A:
            ratio = relative_update(module, adapter_name)
            if ratio is None:
                return None
            ratios[name] = ratio
    if not ratios:
        return None
    worst = sorted(ratios.items(), key=lambda item: item[1], reverse=True)[:WORST_LAYERS]
    return {
        "measure": MEASURE,
        "max_relative_update": max(ratios.values()),
        "median_relative_update": statistics.median(ratios.values()),
        "n_layers": len(ratios),
        "n_above_threshold": sum(ratio > WARN_THRESHOLD for ratio in ratios.values()),
        "worst_layers": [[name, ratio] for name, ratio in worst],
        "threshold": WARN_THRESHOLD,
    }


def summary_line(figures: dict[str, Any]) -> str:
    return (f"NLoRA step 0: {figures['measure']} max {figures['max_relative_update']:.3g}, median "
            f"{figures['median_relative_update']:.3g} over {figures['n_layers']} layers")


def warn_if_damaging(figures: dict[str, Any], *, residual: bool) -> None:
    """One warning per model when the init moves some layer by more than WARN_THRESHOLD, with the fix."""
    if residual or figures["max_relative_update"] <= WARN_THRESHOLD:
        return
    name, ratio = figures["worst_layers"][0]
    logger.warning(
        "NLoRA init changes %d of %d layers' weights by more than %.0f %% at step 0 (largest: %.3g × ‖W‖ in %s; "
        "others: %s): the model starts far from the pretrained one and training may not recover. Fix: "
        "residual: true (subtracts the initial product, so step 0 is the pretrained model; with "
        "nystrom_index: pivoted and nystrom_core: optimal it trained best on SmolLM2-135M).",
        figures["n_above_threshold"], figures["n_layers"], 100 * WARN_THRESHOLD, ratio, name,
        ", ".join(f"{layer} {value:.3g}" for layer, value in figures["worst_layers"][1:]) or "none",
    )
