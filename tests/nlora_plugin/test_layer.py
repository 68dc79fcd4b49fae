"""The NLoRA layer: the authors' init, the forward formula, merge/unmerge, adapters, IntTune."""

import pytest
import torch
from peft import get_peft_model

from nlora_plugin import NLoraConfig, NLoraLinear

from .conftest import tiny_llama


def adapted(config: NLoraConfig, seed: int = 0):
    return get_peft_model(tiny_llama(seed), config)


def q_proj(model) -> NLoraLinear:
    return model.base_model.model.model.layers[0].self_attn.q_proj


def test_default_init_is_the_authors_first_r_slices():
    base = tiny_llama()
    w = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    layer = q_proj(get_peft_model(base, NLoraConfig(r=8, lora_alpha=8, target_modules=["q_proj"])))
    assert torch.equal(layer.lora_A["default"].weight, w[:8, :])
    assert torch.equal(layer.lora_B["default"].weight, w[:, :8])
    assert torch.equal(layer.lora_N["default"].weight, w[:8, :8])
    assert torch.equal(layer.get_base_layer().weight, w)  # no residual: base weight untouched


def test_forward_is_base_plus_scaled_B_N_A_of_dropout_x():
    model = adapted(NLoraConfig(r=4, lora_alpha=12, target_modules=["q_proj"]))
    layer = q_proj(model)
    x = torch.randn(3, 5, 64)
    a, n, b = (layer.lora_A["default"].weight, layer.lora_N["default"].weight, layer.lora_B["default"].weight)
    expected = layer.get_base_layer()(x) + 3.0 * (x @ a.T @ n.T @ b.T)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_slora_init_starts_at_zero_delta_with_nonzero_N():
    model = adapted(NLoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_method="slora"))
    layer = q_proj(model)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert torch.count_nonzero(layer.lora_N["default"].weight) > 0
    assert torch.count_nonzero(layer.get_delta_weight("default")) == 0


def test_gaussian_slora_n_has_std_one_over_r():
    model = adapted(NLoraConfig(r=16, target_modules=["gate_proj"], init_method="slora", slora_n_init="gaussian"))
    n = model.base_model.model.model.layers[0].mlp.gate_proj.lora_N["default"].weight
    assert abs(n.std().item() - 1 / 16) < 0.02


def test_init_does_not_depend_on_global_rng_or_layer_order():
    config = {"r": 4, "target_modules": ["q_proj"], "init_method": "slora", "seed": 3}
    torch.manual_seed(0)
    first = q_proj(adapted(NLoraConfig(**config))).lora_A["default"].weight.clone()
    torch.manual_seed(123)
    second = q_proj(adapted(NLoraConfig(**config))).lora_A["default"].weight
    assert torch.equal(first, second)


def test_merge_equals_unmerged_forward_and_unmerge_restores_weights(input_ids):
    model = adapted(NLoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    original = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    unmerged = model(input_ids).logits
    model.merge_adapter()
    assert torch.allclose(model(input_ids).logits, unmerged, atol=1e-4)
    model.unmerge_adapter()
    for key, value in model.state_dict().items():
        if key in original:
            assert torch.allclose(value, original[key], atol=1e-6), key


def test_merge_and_unload_gives_identical_logits(input_ids):
    model = adapted(NLoraConfig(r=8, target_modules="all-linear"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    expected = model(input_ids).logits
    merged = model.merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_modules())
    assert torch.allclose(merged(input_ids).logits, expected, atol=1e-4)


def test_disable_adapter_gives_the_base_model(input_ids):
    base = tiny_llama()
    reference = base(input_ids).logits
    model = get_peft_model(base, NLoraConfig(r=8, target_modules="all-linear"))
    assert not torch.allclose(model(input_ids).logits, reference, atol=1e-5)  # authors' init moves the output
    with model.disable_adapter():
        assert torch.allclose(model(input_ids).logits, reference, atol=1e-6)


def test_two_adapters_switch_and_stay_independent(input_ids):
    model = adapted(NLoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("second", NLoraConfig(r=6, target_modules=["q_proj", "v_proj"], init_method="slora"))
    layer = q_proj(model)
    assert layer.lora_N["second"].weight.shape == (6, 6)
    first_out = model(input_ids).logits
    model.set_adapter("second")
    with model.disable_adapter():
        base_out = model(input_ids).logits
    assert torch.allclose(model(input_ids).logits, base_out, atol=1e-6)  # SLoRA: zero delta at init
    model.set_adapter("default")
    assert torch.allclose(model(input_ids).logits, first_out)


def test_inttune_trains_only_N_and_survives_set_adapter():
    model = adapted(NLoraConfig(r=8, target_modules="all-linear", train_only_intermediate=True))
    model.add_adapter("other", NLoraConfig(r=4, target_modules="all-linear"))
    model.set_adapter("other")
    model.set_adapter("default")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_N.default." in name for name in trainable)


def test_inttune_loss_goes_down_and_A_B_stay_fixed(input_ids):
    # weights of std 0.2: at hidden size 64 the std-0.02 product B·N·A is too small to move the loss
    base = tiny_llama(init_range=0.2)
    model = get_peft_model(base, NLoraConfig(r=8, target_modules="all-linear", train_only_intermediate=True))
    model.train()
    layer = q_proj(model)
    frozen_a = layer.lora_A["default"].weight.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(20):
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert torch.equal(layer.lora_A["default"].weight, frozen_a)


@pytest.mark.parametrize("field,value", [("nystrom_core", "optimal"), ("nystrom_index", "pivoted")])
def test_residual_mode_keeps_the_output_at_init(input_ids, field, value):
    base = tiny_llama()
    reference = base(input_ids).logits
    model = get_peft_model(base, NLoraConfig(r=8, target_modules="all-linear", residual=True, **{field: value}))
    assert torch.allclose(model(input_ids).logits, reference, atol=1e-4)


def test_residual_mode_disable_unload_and_merge_are_relative_to_the_original_weights(input_ids):
    base = tiny_llama()
    original = base.model.layers[0].mlp.down_proj.weight.detach().clone()
    reference = base(input_ids).logits
    model = get_peft_model(base, NLoraConfig(r=8, target_modules="all-linear", residual=True))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    tuned = model(input_ids).logits
    with model.disable_adapter():
        assert torch.allclose(model(input_ids).logits, reference, atol=1e-4)
    merged = model.merge_and_unload()
    assert torch.allclose(merged(input_ids).logits, tuned, atol=1e-4)
    unloaded = get_peft_model(tiny_llama(), NLoraConfig(r=8, target_modules="all-linear", residual=True)).unload()
    assert torch.allclose(unloaded.model.layers[0].mlp.down_proj.weight, original, atol=1e-6)


def test_residual_larger_than_weight_is_reported_once_per_model(caplog):
    with caplog.at_level("WARNING", logger="nlora_plugin.model"):
        get_peft_model(tiny_llama(), NLoraConfig(r=8, target_modules=["q_proj"], residual=True, nystrom_core="pinv",
                                                 pinv_rtol=0.0))
    warnings = [m for m in caplog.messages if "residual mode" in m]
    assert len(warnings) == 1 and "in 2 of 2 layers" in warnings[0]


def test_optimal_core_residual_is_smaller_than_the_weight(caplog):
    with caplog.at_level("WARNING", logger="nlora_plugin.model"):
        model = get_peft_model(tiny_llama(), NLoraConfig(r=8, target_modules="all-linear", residual=True,
                                                         nystrom_core="optimal"))
    assert not [m for m in caplog.messages if "residual mode" in m]
    assert all(ratio < 1.0 for m in model.modules() if hasattr(m, "residual_ratio") for ratio in
               m.residual_ratio.values())


def test_rank_too_large_for_a_layer_fails_before_any_layer_is_initialised():
    with pytest.raises(ValueError, match=r"r=65 .*q_proj"):
        adapted(NLoraConfig(r=65, target_modules=["q_proj"]))


def test_unsupported_layer_type_is_refused():
    with pytest.raises((TypeError, ValueError), match="nn.Linear"):
        adapted(NLoraConfig(r=4, target_modules=["embed_tokens"]))


def test_bf16_model_initialises_in_float32_and_trains(input_ids):
    base = tiny_llama(dtype=torch.bfloat16)
    w = base.model.layers[0].self_attn.q_proj.weight.detach().float()
    model = get_peft_model(base, NLoraConfig(r=8, target_modules="all-linear", nystrom_core="pinv"))
    layer = q_proj(model)
    assert layer.lora_N["default"].weight.dtype == torch.float32  # PEFT autocasts adapters to fp32
    # computed in float32 (torch.linalg.pinv has no bf16 kernel), then cast to the model dtype
    expected_n = torch.linalg.pinv(w[:8, :8], rtol=1e-2).to(torch.bfloat16).float()
    assert torch.allclose(layer.lora_N["default"].weight, expected_n, rtol=8e-3, atol=1e-6)
    model.train()
    loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    assert torch.isfinite(loss) and layer.lora_N["default"].weight.grad is not None
