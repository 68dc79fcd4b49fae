"""PEFT conformance matrix: the check categories PEFT runs on each of its methods, over every NLoRA option.

Modelled on PEFT's per-method categories (tests/testing_common.py there: save/load, low_cpu_mem_usage,
merge/safe_merge/unmerge/unload, disable_adapter, multiple/active/deleted adapters, requires_grad, only
adapter parameters update, gradient checkpointing, half precision and autocast, generate) — written for
NLoRA, not copied. Cases and by-design rows: conformance_cases.py.
"""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from peft.utils import get_base_model_state_dict, set_base_model_state_dict

import nlora_plugin.layer
from nlora_plugin import NLoraLayer
from nlora_plugin.model import load_original_base_state_dict, original_base_state_dict

from .conformance_cases import BY_DESIGN, CASES, MODELS, VOCAB, matrix, nlora_config

ATOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:NLoRA adapter .* is IntTune:UserWarning")


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


def wrapped(case: str, kind: str, dtype: torch.dtype = torch.float32, **overrides) -> PeftModel:
    return get_peft_model(MODELS[kind](dtype=dtype), nlora_config(case, kind, **overrides))


def perturb(model: torch.nn.Module, adapter: str = "default", scale: float = 0.1, seed: int = 0) -> None:
    """Stand-in for training: move every adapter tensor of `adapter` (frozen ones too: A and B of IntTune)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name and name.endswith(f".{adapter}.weight"):
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def layers(model) -> list[NLoraLayer]:
    return [m for m in model.modules() if isinstance(m, NLoraLayer)]


def amplification(model) -> float:
    """max over layers of 1 + max|scale·B·N·A| / max|W|: rounding W + delta errs in proportion to it
    (1.3-3.5 here for most options; 53-118 for `nystrom_core: pinv`, whose product is many times W)."""
    ratios = [1.0]
    for layer in layers(model):
        weight = layer.get_base_layer().weight.detach().float().abs().max()
        for name in layer.lora_A:
            ratios.append(1.0 + float(layer.get_delta_weight(name).detach().float().abs().max() / weight))
    return max(ratios)


def assert_pinv_is_flagged(case: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """The designed behaviour where half precision cannot hold W + delta: the step-0 warning names it."""
    with caplog.at_level(logging.WARNING, logger="nlora_plugin.diagnostics"):
        model = wrapped(case, kind)
    assert re.search(r"at step 0 \(largest: [0-9.]+ × ‖W‖", caplog.text), caplog.text
    assert amplification(model) > 10


def base_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k and ".residual_" not in k}


# --- save / load --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pickle"])
@pytest.mark.parametrize("case,kind", matrix("save_load"))
def test_save_and_load(case, kind, safe, ids, tmp_path):
    model = wrapped(case, kind)
    perturb(model)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ("adapter_model.safetensors" if safe else "adapter_model.bin")).is_file()
    saved = get_peft_model_state_dict(model)
    assert saved and all(".lora_" in key for key in saved)  # no base weight, no residual factor
    loaded = PeftModel.from_pretrained(MODELS[kind](), tmp_path)
    torch.testing.assert_close(logits(loaded, ids), expected, atol=ATOL, rtol=ATOL)
    reloaded = get_peft_model_state_dict(loaded)
    assert reloaded.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(reloaded[key], saved[key], msg=key)


@pytest.mark.parametrize("case,kind", matrix("save_selected_adapters"))
def test_save_selected_adapters(case, kind, ids, tmp_path):
    model = wrapped(case, kind)
    model.add_adapter("other", nlora_config(case, kind, seed=9))
    perturb(model, "other", seed=2)
    model.set_adapter("other")
    expected = logits(model, ids)
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    assert (tmp_path / "other" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter_config.json").exists()  # the unselected default adapter is not saved
    if ("save_selected_adapters", case) in BY_DESIGN:  # "other" was built on W - P_default: load it there
        loaded = wrapped(case, kind)
        loaded.load_adapter(tmp_path / "other", adapter_name="other")
        loaded.set_adapter("other")
    else:
        loaded = PeftModel.from_pretrained(MODELS[kind](), tmp_path / "other", adapter_name="other")
        assert set(loaded.peft_config) == {"other"}
    torch.testing.assert_close(logits(loaded, ids), expected, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("case,kind", matrix("low_cpu_mem_usage"))
def test_low_cpu_mem_usage(case, kind, ids, tmp_path):
    empty = get_peft_model(MODELS[kind](), nlora_config(case, kind), low_cpu_mem_usage=True)
    adapter = [p for name, p in empty.named_parameters() if ".lora_" in name]
    assert adapter and all(p.is_meta for p in adapter)  # no Nyström init spent on weights to be overwritten
    model = wrapped(case, kind)
    perturb(model)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(MODELS[kind](), tmp_path, low_cpu_mem_usage=True)
    assert not any(t.is_meta for t in loaded.state_dict().values())
    torch.testing.assert_close(logits(loaded, ids), expected, atol=ATOL, rtol=ATOL)
    loaded.load_adapter(tmp_path, adapter_name="again", low_cpu_mem_usage=True)
    loaded.set_adapter("again")
    assert not any(t.is_meta for t in loaded.state_dict().values())
    if not CASES[case].get("residual"):  # a second residual adapter subtracts its own product: other outputs
        torch.testing.assert_close(logits(loaded, ids), expected, atol=ATOL, rtol=ATOL)


# --- merge / unmerge / unload -------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_merge", [False, True], ids=["merge", "safe_merge"])
@pytest.mark.parametrize("case,kind", matrix("merge"))
def test_merge_unmerge(case, kind, safe_merge, ids):
    model = wrapped(case, kind)
    perturb(model)
    before = base_weights(model)
    expected = logits(model, ids)
    model.merge_adapter(safe_merge=safe_merge)
    assert all(layer.merged for layer in layers(model))
    torch.testing.assert_close(logits(model, ids), expected, atol=ATOL, rtol=ATOL)
    model.unmerge_adapter()
    atol = 1e-6 * amplification(model)  # W + delta - delta rounds at delta's size
    for key, value in base_weights(model).items():
        torch.testing.assert_close(value, before[key], atol=atol, rtol=1e-5, msg=key)
    torch.testing.assert_close(logits(model, ids), expected, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case,kind", matrix("merge_half"))
def test_merge_half_precision(case, kind, dtype, ids, caplog):
    if ("merge_half", case) in BY_DESIGN:
        assert_pinv_is_flagged(case, kind, caplog)
        return
    model = wrapped(case, kind, dtype=dtype)
    perturb(model)
    expected = logits(model, ids)
    merged = model.merge_and_unload(safe_merge=True)
    assert next(merged.parameters()).dtype == dtype
    got = logits(merged, ids)
    assert torch.isfinite(got).all()
    tolerance = 0.05 * expected.abs().max().item()  # one rounding of W + delta to the half type
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=0.05)


@pytest.mark.parametrize("case,kind", matrix("merge_and_unload"))
def test_merge_and_unload_and_unload(case, kind, ids):
    reference = logits(MODELS[kind](), ids)
    model = wrapped(case, kind)
    perturb(model)
    expected = logits(model, ids)
    merged = model.merge_and_unload()
    assert not layers(merged)
    torch.testing.assert_close(logits(merged, ids), expected, atol=ATOL, rtol=ATOL)
    unloaded = wrapped(case, kind)
    perturb(unloaded)
    base = unloaded.unload()  # residual mode gives the subtracted product back
    assert not layers(base)
    torch.testing.assert_close(logits(base, ids), reference, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("case,kind", matrix("safe_merge_nan"))
def test_safe_merge_detects_nan(case, kind):
    model = wrapped(case, kind)
    perturb(model)
    layer = layers(model)[0]
    with torch.no_grad():
        layer.lora_N["default"].weight[0, 0] = float("nan")
    before = base_weights(model)
    with pytest.raises(ValueError, match="NaN"):
        model.merge_adapter(safe_merge=True)
    for key, value in base_weights(model).items():
        assert torch.equal(value, before[key]), f"{key} changed by a refused merge"


# --- disable / multiple / delete ----------------------------------------------------------------------------


@pytest.mark.parametrize("case,kind", matrix("disable_adapter"))
def test_disable_adapter(case, kind, ids):
    reference = logits(MODELS[kind](), ids)
    model = wrapped(case, kind)
    perturb(model)
    adapted = logits(model, ids)
    assert not torch.allclose(adapted, reference, atol=ATOL)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids), reference, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(logits(model, ids), adapted, atol=ATOL, rtol=ATOL)
    model.merge_adapter()
    with model.disable_adapter():  # a merged adapter is unmerged first
        torch.testing.assert_close(logits(model, ids), reference, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("case,kind", matrix("identity_at_init"))
def test_output_at_init(case, kind, ids):
    reference = logits(MODELS[kind](), ids)
    at_init = logits(wrapped(case, kind), ids)
    if ("identity_at_init", case) in BY_DESIGN:
        assert not torch.allclose(at_init, reference, atol=ATOL)
    else:  # SLoRA (B = 0) and residual mode start exactly at the base model
        torch.testing.assert_close(at_init, reference, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("case,kind", matrix("multiple_adapters"))
def test_multiple_and_active_adapters(case, kind, ids):
    model = wrapped(case, kind)
    perturb(model)
    first = logits(model, ids)
    model.add_adapter("other", nlora_config(case, kind, seed=9))
    perturb(model, "other", seed=3)
    assert model.active_adapters == ["default"]
    torch.testing.assert_close(logits(model, ids), first, atol=ATOL, rtol=ATOL)  # adding does not activate
    model.set_adapter("other")
    assert model.active_adapters == ["other"]
    second = logits(model, ids)
    assert not torch.allclose(second, first, atol=ATOL)
    # both active at once: on one layer, the two deltas add up (each relative to the original W)
    layer = layers(model)[0]
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with model.disable_adapter():
            base_out = layer(x)
        outputs = {}
        for active in (["default"], ["other"], ["default", "other"]):
            model.base_model.set_adapter(active)
            outputs[tuple(active)] = layer(x)
    torch.testing.assert_close(outputs[("default", "other")] - base_out,
                               (outputs[("default",)] - base_out) + (outputs[("other",)] - base_out),
                               atol=ATOL, rtol=ATOL)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, ids), first, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("case,kind", matrix("delete_adapter"))
def test_delete_adapter(case, kind, ids):
    original = base_weights(MODELS[kind]())
    reference = logits(MODELS[kind](), ids)
    model = wrapped(case, kind)
    perturb(model)
    first = logits(model, ids)
    model.add_adapter("other", nlora_config(case, kind, seed=9))
    model.delete_adapter("other")  # inactive
    assert "other" not in model.peft_config
    assert all("other" not in getattr(layer, attr) for layer in layers(model)
               for attr in ("lora_A", "lora_N", "lora_B", "r", "scaling", "residual_A"))
    torch.testing.assert_close(logits(model, ids), first, atol=ATOL, rtol=ATOL)
    model.add_adapter("other", nlora_config(case, kind, seed=9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Adapter default was active which is now deleted"
        model.delete_adapter("default")  # active: "other" takes over
    assert model.active_adapters == ["other"]
    model.delete_adapter("other")
    assert not model.peft_config
    restored = base_weights(model.base_model.model)
    for key, value in original.items():  # residual adapters gave their products back
        peft_key = next(k for k in restored if k.replace(".base_layer", "") == key)
        torch.testing.assert_close(restored[peft_key], value, atol=1e-6, rtol=1e-5, msg=key)
    torch.testing.assert_close(logits(model.base_model.model, ids), reference, atol=ATOL, rtol=ATOL)


# --- what trains --------------------------------------------------------------------------------------------


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case,kind", matrix("requires_grad"))
def test_requires_grad(case, kind, monkeypatch):
    monkeypatch.setattr(nlora_plugin.layer, "_warned_inttune_frozen", False)
    by_design = ("requires_grad", case) in BY_DESIGN
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = wrapped(case, kind)
        model.add_adapter("other", nlora_config(case, kind, seed=9))
    expected_default = {n for n, _ in model.named_parameters() if ".lora_" in n and n.endswith(".default.weight")}
    if by_design:
        expected_default = {n for n in expected_default if ".lora_N." in n}
    assert trainable(model) == expected_default  # only the active adapter; nothing of the base model
    model.set_requires_grad("other", requires_grad=True)
    others = {n for n, _ in model.named_parameters() if ".lora_" in n and n.endswith(".other.weight")}
    if by_design:
        others = {n for n in others if ".lora_N." in n}
        model.set_requires_grad("other", requires_grad=True)
    assert trainable(model) == expected_default | others
    model.set_requires_grad(["default", "other"], requires_grad=False)
    assert not trainable(model)
    frozen_warnings = [w for w in caught if "stay frozen by design" in str(w.message)]
    assert len(frozen_warnings) == (1 if by_design else 0)  # once per process, however often asked


@pytest.mark.parametrize("case,kind", matrix("only_adapter_parameters_update"))
def test_only_adapter_parameters_update(case, kind, ids):
    model = wrapped(case, kind)
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # SLoRA: B = 0 at step 0, so A and N get gradients from step 2 on
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    expected = {n for n in before if ".lora_" in n}
    if ("only_adapter_parameters_update", case) in BY_DESIGN:
        expected = {n for n in expected if ".lora_N." in n}
    assert changed == expected


@pytest.mark.parametrize("case,kind", matrix("gradient_checkpointing"))
def test_gradient_checkpointing(case, kind, ids):
    grads = []
    for checkpointing in (False, True):
        model = wrapped(case, kind)
        perturb(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


# --- precision ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case,kind", matrix("half_precision_forward"))
def test_half_precision_forward(case, kind, dtype, ids, caplog):
    if ("half_precision_forward", case) in BY_DESIGN:
        assert_pinv_is_flagged(case, kind, caplog)
        return
    full = wrapped(case, kind)
    perturb(full)
    expected = logits(full, ids)
    for autocast_adapter_dtype, adapter_dtype in ((True, torch.float32), (False, dtype)):
        model = get_peft_model(MODELS[kind](dtype=dtype), nlora_config(case, kind),
                               autocast_adapter_dtype=autocast_adapter_dtype)
        assert {p.dtype for n, p in model.named_parameters() if ".lora_" in n} == {adapter_dtype}
        # the float32 model's tensors, rounded: a forward-precision check (pivots and pinv of a rounded W
        # are a different init, not a precision error)
        model.load_state_dict(full.state_dict())
        got = model(input_ids=ids).logits
        assert got.dtype == dtype and torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), expected, atol=0.05 * expected.abs().max().item(), rtol=0.05)


@pytest.mark.parametrize("case,kind", matrix("autocast"))
def test_autocast_training_step(case, kind, ids, caplog):
    if ("autocast", case) in BY_DESIGN:
        assert_pinv_is_flagged(case, kind, caplog)
        return
    model = wrapped(case, kind)
    perturb(model)
    expected = logits(model, ids)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast casts ops, not weights
    torch.testing.assert_close(out.logits.float().detach(), expected, atol=0.05 * expected.abs().max().item(),
                               rtol=0.05)


# --- generate and inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,kind", matrix("generate"))
def test_generate(case, kind, ids):
    model = wrapped(case, kind)
    perturb(model)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        generated = model.generate(input_ids=ids, **settings)
        with model.disable_adapter():
            base_generated = model.generate(input_ids=ids, **settings)
        assert torch.equal(base_generated, MODELS[kind]().generate(input_ids=ids, **settings))
        assert torch.equal(model.merge_and_unload().generate(input_ids=ids, **settings), generated)
    assert generated.shape == (2, ids.shape[1] + 4)


@pytest.mark.parametrize("case,kind", matrix("inputs_embeds"))
def test_inputs_embeds(case, kind, ids):
    model = wrapped(case, kind)
    perturb(model)
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(input_ids=ids).logits)


# --- base model state dict (residual mode) ------------------------------------------------------------------


@pytest.mark.parametrize("case,kind", matrix("base_model_state_dict"))
def test_base_model_state_dict(case, kind, ids):
    original = MODELS[kind]().state_dict()
    model = wrapped(case, kind)
    perturb(model)
    expected = logits(model, ids)
    state = get_base_model_state_dict(model)
    assert state.keys() == original.keys()
    recovered = original_base_state_dict(model)  # the pretrained weights in every mode
    for key, value in original.items():
        torch.testing.assert_close(recovered[key], value, atol=1e-6, rtol=1e-5, msg=key)
    if ("base_model_state_dict", case) in BY_DESIGN:
        assert any(not torch.allclose(state[k], original[k]) for k in original)  # the residual, not W
        # the pitfall: loading the original weights with PEFT's setter silently undoes the subtraction
        broken = wrapped(case, kind)
        perturb(broken)
        set_base_model_state_dict(broken, original)
        assert not torch.allclose(logits(broken, ids), expected, atol=ATOL)
        # the answer: load them with load_original_base_state_dict, which subtracts the product again
        load_original_base_state_dict(broken, original)
        torch.testing.assert_close(logits(broken, ids), expected, atol=ATOL, rtol=ATOL)
    else:
        for key, value in original.items():
            assert torch.equal(state[key], value), key
    set_base_model_state_dict(model, state)  # PEFT's round trip is exact in every mode
    torch.testing.assert_close(logits(model, ids), expected, atol=ATOL, rtol=ATOL)
