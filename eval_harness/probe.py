"""After an adapter loads: every saved tensor was used, and the adapter changes (or keeps) the outputs.

Two silent failures make a score belong to another model: adapter weights that PEFT did not load
(a key mismatch leaves the init in place with only a warning) and an adapter that leaves the outputs
unchanged (the base model is scored; lm-evaluation-harness issue 2432). Both are refused here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from eval_harness.errors import ConfigError

PROBE_LENGTH = 16
PROBE_SEED = 0
NO_EFFECT_TOLERANCE = 1e-6  # relative to the logit scale: at or below it the adapter did nothing (an ignored
# adapter gives exactly 0, in any dtype)
IDENTITY_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-6}  # half precision: HALF_IDENTITY_TOLERANCE
HALF_IDENTITY_TOLERANCE = 1e-2  # bf16/fp16 rounding of two equal sums computed in a different order


def saved_tensor_names(adapter: Path) -> set[str]:
    """Names of the tensors in the adapter's weight file."""
    weights = adapter / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            return set(handle.keys())
    return set(torch.load(adapter / "adapter_model.bin", map_location="cpu", weights_only=True))


def check_all_tensors_loaded(model: Any, adapter: Path, *, label: str) -> None:
    """The adapter's file and the loaded PEFT model name the same adapter tensors (none dropped, none missing)."""
    from peft.utils import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    saved = saved_tensor_names(adapter)
    missing, unused = sorted(expected - saved), sorted(saved - expected)
    if missing or unused:
        detail = (f"{len(missing)} adapter tensor(s) of the model are not in the file (e.g. {missing[0]})" if missing
                  else f"{len(unused)} tensor(s) of the file match no module of the base model (e.g. {unused[0]})")
        raise ConfigError(
            f"models[{label}].adapter: {adapter} does not fit this base model: {detail}; PEFT would leave those "
            "layers at their init. Evaluate it on the base model it was trained on."
        )


def probe_ids(vocab_size: int) -> torch.Tensor:
    """Fixed token ids (one sequence of PROBE_LENGTH), the same for every model with this vocabulary."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(min(vocab_size, 1000) // 10, min(vocab_size, 1000), (1, PROBE_LENGTH), generator=generator)


@torch.no_grad()
def probe_adapter(model: Any, *, label: str, expect_identity: bool) -> dict[str, float]:
    """Logits with the adapter vs with it disabled, on fixed ids; ConfigError if that contradicts the YAML.

    Returns {"max_abs_delta_logit", "logit_scale", "relative_delta"}: recorded in model.json.
    """
    device = next(model.parameters()).device
    ids = probe_ids(model.get_input_embeddings().weight.shape[0]).to(device)
    with_adapter = model(input_ids=ids).logits.float()
    with model.disable_adapter():
        without = model(input_ids=ids).logits.float()
    delta = float((with_adapter - without).abs().max())
    scale = float(without.abs().max())
    relative = delta / max(scale, 1e-30)
    if not (torch.isfinite(with_adapter).all() and torch.isfinite(without).all()):
        raise ConfigError(f"models[{label}]: the model's logits on the probe input are not finite (NaN/Inf) with "
                          "the adapter or without it; the adapter or the base weights are broken")
    if relative <= NO_EFFECT_TOLERANCE and not expect_identity:
        raise ConfigError(
            f"models[{label}].adapter: the adapter does not change the model's output (max |Δ logit| = {delta:.3g} at "
            f"a logit scale of {scale:.3g}), so its scores would be the base model's. Check that it was trained and "
            "saved after training; if it is meant to leave the outputs unchanged, set `expect_identity: true`."
        )
    identity_tolerance = IDENTITY_TOLERANCE.get(next(model.parameters()).dtype, HALF_IDENTITY_TOLERANCE)
    if relative > identity_tolerance and expect_identity:
        raise ConfigError(
            f"models[{label}].expect_identity: true, but the adapter changes the output (max |Δ logit| = {delta:.3g} "
            f"at a logit scale of {scale:.3g}); drop `expect_identity` or fix the adapter"
        )
    return {"max_abs_delta_logit": delta, "logit_scale": scale, "relative_delta": relative}
