"""The SLoRA/NLoRA adapter layer: out = base(x) + (alpha / r) · B(N(A(dropout(x)))) (paper eq. 6).

``get_delta_weight`` is the single source of truth for merge, unmerge and export.
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import NLoraConfig
from .distributed import full_weight
from .nystrom import check_finite_weight, nystrom_factors

logger = logging.getLogger(__name__)

INTTUNE_FROZEN = ("lora_A", "lora_B")
_warned_inttune_frozen = False  # the IntTune "A and B stay frozen" warning is given once per process


def layer_seed(seed: int, layer_key: str) -> int:
    """A per-layer seed from (config seed, module name): the init does not depend on layer order or rank."""
    return (seed * 1_000_003 + zlib.crc32(layer_key.encode())) % (2**63)


def check_nlora_rank(config: NLoraConfig, in_features: int, out_features: int, module: str, fixes: str) -> None:
    """NLoRA samples r distinct rows and columns of W: r above min(in, out) is an error (SLoRA takes any r)."""
    smaller = min(in_features, out_features)
    if config.init_method == "nlora" and config.r > smaller:
        raise ValueError(
            f"NLoraConfig.r={config.r} is larger than the smaller dimension of {module} "
            f"({out_features}×{in_features}): NLoRA samples r distinct rows and columns of W; use r <= {smaller}{fixes}"
        )


def _empty_linear(in_features: int, out_features: int, device: torch.device) -> nn.Linear:
    """A bias-free Linear on `device` whose weight is filled by our init (no wasted default init).

    The weight is registered as a new Parameter (uninitialised memory), so PEFT's ``init_empty_weights``
    context (``low_cpu_mem_usage=True``), which patches ``register_parameter``, puts it on the meta device.
    """
    layer = nn.Linear(in_features, out_features, bias=False, device="meta")
    layer.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
    return layer


def _warn_inttune_frozen(adapter_name: str) -> None:
    """Say once per process that IntTune's lora_A / lora_B stay frozen when a caller asks them to train."""
    global _warned_inttune_frozen
    if _warned_inttune_frozen:
        return
    _warned_inttune_frozen = True
    warnings.warn(
        f"NLoRA adapter {adapter_name!r} is IntTune (train_only_intermediate=True, paper §4.3): lora_A and lora_B "
        "stay frozen by design and only lora_N trains. To train all three, create the adapter with "
        "train_only_intermediate=False.",
        UserWarning,
        stacklevel=3,
    )


class NLoraLayer(BaseTunerLayer):
    """Adapter state shared by every NLoRA layer type: one A, N, B per adapter name."""

    adapter_layer_names = ("lora_A", "lora_N", "lora_B")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict({})
        self.lora_A = nn.ModuleDict({})
        self.lora_N = nn.ModuleDict({})
        self.lora_B = nn.ModuleDict({})
        # residual mode: the initial factors whose product was subtracted from the base weight. Persistent,
        # so they travel in model.state_dict() with the residual base weight: a rank that builds the model on
        # the meta device and receives rank 0's state dict (FSDP2, accelerate cpu_ram_efficient_loading) gets
        # both. They are not adapter tensors (no "lora_" prefix): PEFT's adapter file leaves them out and a
        # loaded adapter recomputes them from the original base weight (same seed, same factors).
        self.residual_A = BufferDict({}, persistent=True)
        self.residual_N = BufferDict({}, persistent=True)
        self.residual_B = BufferDict({}, persistent=True)
        self.residual_ratio: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs

        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            self.in_features, self.out_features = base.in_features, base.out_features
            self.fan_in_fan_out = False
        elif isinstance(base, Conv1D):  # GPT-2: weight stored (in, out)
            shape = getattr(base.weight, "ds_shape", base.weight.shape)
            self.in_features, self.out_features = shape[0], shape[1]
            self.fan_in_fan_out = True
        else:
            raise TypeError(
                f"NLoRA adapts torch.nn.Linear and transformers Conv1D layers, not {type(base).__name__}; "
                "remove this module from target_modules."
            )

    def update_layer(self, adapter_name: str, config: NLoraConfig, layer_key: str) -> None:
        """Create and initialise adapter `adapter_name` (paper §3 for NLoRA, App. B for SLoRA)."""
        r = config.r
        check_nlora_rank(config, self.in_features, self.out_features, layer_key, " (init_method='slora' accepts any r)")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.lora_alpha / r
        dropout = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_dropout[adapter_name] = dropout
        device = self.get_base_layer().weight.device
        self.lora_A[adapter_name] = _empty_linear(self.in_features, r, device)
        self.lora_N[adapter_name] = _empty_linear(r, r, device)
        self.lora_B[adapter_name] = _empty_linear(r, self.out_features, device)
        self._initialize(adapter_name, config, layer_key)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        if config.train_only_intermediate:
            # IntTune (§4.3): PEFT re-applies this after every set_adapter / mark-trainable call.
            self.frozen_peft_weight_names = {**self.frozen_peft_weight_names, adapter_name: INTTUNE_FROZEN}
            if not config.inference_mode and adapter_name in self.active_adapters:
                _warn_inttune_frozen(adapter_name)  # e.g. PeftModel.from_pretrained(..., is_trainable=True)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        """PEFT's set_requires_grad, plus a one-time warning when IntTune's frozen A / B are asked to train."""
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        if requires_grad:
            for adapter_name in sorted(names & set(self.frozen_peft_weight_names)):
                _warn_inttune_frozen(adapter_name)
        super().set_requires_grad(adapter_names, requires_grad)

    @torch.no_grad()
    def _initialize(self, adapter_name: str, config: NLoraConfig, layer_key: str) -> None:
        lora_A = self.lora_A[adapter_name].weight
        lora_N = self.lora_N[adapter_name].weight
        lora_B = self.lora_B[adapter_name].weight
        adapter_on_meta = lora_A.device.type == "meta"  # shapes only: a parameter count, or PEFT's
        # low_cpu_mem_usage loading, where the trained weights arrive with load_state_dict; the residual
        # must still be subtracted from a real base weight then.
        if self.get_base_layer().weight.device.type == "meta":
            if config.residual:  # a rank that receives a wrapped model's state dict: make room for the factors
                self._register_residual_on_meta(adapter_name)
            return
        if adapter_on_meta and not config.residual:
            return
        generator = torch.Generator().manual_seed(layer_seed(config.seed, layer_key))
        if config.init_method == "slora":
            # drawn on the CPU so the values do not depend on the device (or rank) the adapter lives on
            initial_A = torch.empty(lora_A.shape)
            initial_N = torch.empty(lora_N.shape)
            nn.init.kaiming_uniform_(initial_A, a=math.sqrt(5), generator=generator)
            if config.slora_n_init == "kaiming":
                nn.init.kaiming_uniform_(initial_N, a=math.sqrt(5), generator=generator)
            else:
                nn.init.normal_(initial_N, std=1 / config.r, generator=generator)
            lora_A.copy_(initial_A)
            lora_N.copy_(initial_N)
            nn.init.zeros_(lora_B)
            return
        with full_weight(self.get_base_layer().weight, modify=config.residual) as weight:
            weight_t = weight.T if self.fan_in_fan_out else weight
            check_finite_weight(weight_t, layer_key)
            factors = nystrom_factors(
                weight_t,
                config.r,
                index=config.nystrom_index,
                core=config.nystrom_core,
                pinv_rtol=config.pinv_rtol,
                generator=generator,
            )
            if not adapter_on_meta:
                lora_A.copy_(factors.lora_A)
                lora_N.copy_(factors.lora_N)
                lora_B.copy_(factors.lora_B)
            if config.residual:
                self._subtract_initial_product(adapter_name, weight, factors, layer_key)

    def _register_residual_on_meta(self, adapter_name: str) -> None:
        """Meta-device residual factors: the base weight and these arrive together with a rank-0 state dict."""
        r = self.r[adapter_name]
        self.residual_A[adapter_name] = torch.empty(r, self.in_features, device="meta")
        self.residual_N[adapter_name] = torch.empty(r, r, device="meta")
        self.residual_B[adapter_name] = torch.empty(self.out_features, r, device="meta")

    def _subtract_initial_product(self, adapter_name: str, weight: torch.Tensor, factors, layer_key: str) -> None:
        """Residual mode: W <- W - scale·B0·N0·A0, so the model output at step 0 is the pretrained one.

        Records ‖W − scale·B0·N0·A0‖ / ‖W‖ in `residual_ratio`; the tuner reports the layers where it
        exceeds 1 (the factors do not approximate W there).
        """
        self.residual_A[adapter_name] = factors.lora_A
        self.residual_N[adapter_name] = factors.lora_N
        self.residual_B[adapter_name] = factors.lora_B
        original_norm = torch.linalg.vector_norm(weight, dtype=torch.float32)
        left = factors.lora_B @ factors.lora_N  # out × r
        if weight.dtype == torch.float32:  # one in-place pass over W, no full-size temporaries
            if self.fan_in_fan_out:
                weight.addmm_(factors.lora_A.T, left.T, alpha=-self.scaling[adapter_name])
            else:
                weight.addmm_(left, factors.lora_A, alpha=-self.scaling[adapter_name])
        else:  # low-precision weights: subtract in float32, round once
            weight.copy_((weight.float() - self._residual_delta(adapter_name)).to(weight.dtype))
        residual_norm = torch.linalg.vector_norm(weight, dtype=torch.float32)
        self.residual_ratio[adapter_name] = float(residual_norm / original_norm.clamp_min(1e-30))
        logger.debug("%s: ‖W − scale·BNA‖ / ‖W‖ = %.4f", layer_key, self.residual_ratio[adapter_name])

    def _check_residual_loaded(self, adapter_name: str) -> None:
        if self.residual_A[adapter_name].is_meta:
            raise RuntimeError(
                f"NLoRA residual adapter {adapter_name!r} was created on the meta device and its residual factors "
                "(residual_A/N/B buffers) were never loaded: load the state dict of a wrapped model (rank 0's "
                "model.state_dict(), which holds them with the residual base weight), or wrap a model whose "
                "weights are real."
            )

    def _residual_delta(self, adapter_name: str) -> torch.Tensor:
        """scale·B0·N0·A0 in the base weight's layout: the product subtracted at init (residual mode)."""
        self._check_residual_loaded(adapter_name)
        product = self.residual_B[adapter_name] @ self.residual_N[adapter_name] @ self.residual_A[adapter_name]
        product = product * self.scaling[adapter_name]
        return product.T if self.fan_in_fan_out else product

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """scale · B·N·A in the base weight's layout (float32 if the adapter is): what merge adds to W."""
        lora_A = self.lora_A[adapter_name].weight
        lora_N = self.lora_N[adapter_name].weight
        lora_B = self.lora_B[adapter_name].weight
        compute_dtype = torch.float32 if lora_A.dtype in (torch.float16, torch.bfloat16) else lora_A.dtype
        delta = lora_B.to(compute_dtype) @ lora_N.to(compute_dtype) @ lora_A.to(compute_dtype)
        delta = delta * self.scaling[adapter_name]
        return delta.T if self.fan_in_fan_out else delta

    def residual_adapters(self) -> list[str]:
        """Adapters whose initial product was subtracted from this layer's base weight."""
        return list(self.residual_A.keys())

    @torch.no_grad()
    def _add_to_base_weight(self, delta: torch.Tensor) -> None:
        """W += delta on the full weight (gathered and re-sharded under ZeRO-3 / FSDP2), rounded once to W's dtype."""
        with full_weight(self.get_base_layer().weight, modify=True) as weight:
            if weight.dtype == torch.float32:
                weight.add_(delta.to(weight.device, weight.dtype))
            else:
                weight.copy_((weight.float() + delta.to(weight.device, torch.float32)).to(weight.dtype))

    def residual_product(self) -> torch.Tensor | None:
        """Σ scale·B0·N0·A0 over the residual adapters (W's layout): what residual mode took from W; None if none."""
        deltas = [self._residual_delta(name) for name in self.residual_adapters()]
        return torch.stack(deltas).sum(0) if deltas else None

    @torch.no_grad()
    def subtract_residuals(self) -> None:
        """Take every residual adapter's initial product from W again: after the *original* W was loaded."""
        product = self.residual_product()
        if product is not None:
            self._add_to_base_weight(-product)

    @torch.no_grad()
    def restore_residuals(self) -> None:
        """Add back the initial product of every residual adapter that is not merged (used on unload)."""
        for adapter_name in self.residual_adapters():
            if adapter_name not in self.merged_adapters:
                self._add_to_base_weight(self._residual_delta(adapter_name))

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter; a residual adapter's initial product is first added back to W."""
        if adapter_name in self.residual_adapters():
            self._add_to_base_weight(self._residual_delta(adapter_name))
            for buffers in (self.residual_A, self.residual_N, self.residual_B):
                del buffers[adapter_name]
            self.residual_ratio.pop(adapter_name, None)
        super().delete_adapter(adapter_name)


class NLoraLinear(nn.Module, NLoraLayer):
    """NLoRA on an nn.Linear (or a GPT-2 Conv1D)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: NLoraConfig, layer_key: str) -> None:
        super().__init__()
        NLoraLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, layer_key)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' delta weights into the base weight."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for adapter_name in adapter_names:
            if adapter_name not in self.lora_A:
                continue
            with torch.no_grad(), full_weight(self.get_base_layer().weight, modify=True) as weight:
                delta = self.get_delta_weight(adapter_name).to(weight.device, weight.dtype)
                if safe_merge:  # check on a copy: the weight is untouched if the merge would be non-finite
                    merged = weight + delta
                    if not torch.isfinite(merged).all():
                        raise ValueError(f"NaNs detected in the merged weights of adapter {adapter_name!r}")
                    weight.copy_(merged)
                else:
                    weight.add_(delta)
            self.merged_adapters.append(adapter_name)

    def unmerge(self) -> None:
        """Subtract every merged adapter's delta weight again."""
        while self.merged_adapters:
            adapter_name = self.merged_adapters.pop()
            self._add_to_base_weight(-self.get_delta_weight(adapter_name))

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.Module:
        """PEFT's unload hook: merge if asked, give residual adapters' products back, return the base layer."""
        if merge:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        self.restore_residuals()
        return self.get_base_layer()

    def _residual_output(self, x: torch.Tensor, skip: set[str]) -> torch.Tensor | None:
        """scale·B0 N0 A0 x for residual adapters not in `skip`: keeps W whole when they are inactive."""
        total = None
        for adapter_name in self.residual_adapters():
            if adapter_name in skip:
                continue
            self._check_residual_loaded(adapter_name)
            h = x.to(self.residual_A[adapter_name].dtype) @ self.residual_A[adapter_name].T
            h = h @ self.residual_N[adapter_name].T @ self.residual_B[adapter_name].T
            h = h * self.scaling[adapter_name]
            total = h if total is None else total + h
        return total

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        active = set() if self.disable_adapters else set(self.active_adapters)
        in_weight = active | set(self.merged_adapters)
        restore = self._residual_output(x, skip=in_weight)
        if restore is not None:
            result = result + restore.to(result_dtype)
        if self.disable_adapters or self.merged:
            return result
        for adapter_name in self.active_adapters:
            if adapter_name not in self.lora_A:
                continue
            lora_A = self.lora_A[adapter_name]
            h = lora_A(self.lora_dropout[adapter_name](self._cast_input_dtype(x, lora_A.weight.dtype)))
            h = self.lora_B[adapter_name](self.lora_N[adapter_name](h))
            result = result + (h * self.scaling[adapter_name]).to(result_dtype)
        return result.to(result_dtype)

    def __repr__(self) -> str:
        return "nlora." + super().__repr__()
