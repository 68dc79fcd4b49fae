"""`backend: vllm` is checked before anything loads, and GSM8K/MATH on the engine follow lm-eval's HF model.

These run without vLLM; tests/eval_harness/test_vllm_backend.py runs the engine itself (.venv-vllm).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from eval_harness.adapters import check_servable_by_vllm, served_lora_rank, vllm_max_lora_rank
from eval_harness.config import VLLMSettings
from eval_harness.errors import ConfigError
from eval_harness.eval_yaml import load_config
from tests.eval_harness.conftest import tiny_config, write_yaml

LORA = {"peft_type": "LORA", "r": 16, "bias": "none"}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_backend_vllm_without_vllm_names_the_fix(eval_dir):
    config = tiny_config(generation={"backend": "vllm"})
    with pytest.raises(ConfigError, match=r"^generation\.backend: 'vllm', but vLLM is not installed.*make vllm"):
        load_config(write_yaml(eval_dir, config))


def test_backend_defaults_to_hf_and_is_written_to_run_json(eval_dir):
    config = load_config(write_yaml(eval_dir, tiny_config()))
    assert config.generation.backend == "hf" and config.generation.vllm is None
    assert config.as_dict()["generation"]["backend"] == "hf"


@pytest.mark.parametrize(("change", "reason"), [
    ({"use_dora": True}, "use_dora is true"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save is"),
    ({"bias": "all"}, "bias is 'all'"),
    ({"r": 600}, "exceeds vLLM's largest, 512"),
])
def test_adapters_vllm_would_not_serve_as_trained_are_refused(change, reason):
    with pytest.raises(ConfigError, match=rf"^models\[1\]\.adapter: vLLM would not serve .*{reason}.*backend: hf"):
        check_servable_by_vllm({**LORA, **change}, where="models[1].adapter")


def test_only_lora_and_nlora_are_served():
    check_servable_by_vllm(LORA, where="a")
    check_servable_by_vllm({"peft_type": "NLORA", "r": 16, "residual": True}, where="a")
    with pytest.raises(ConfigError, match=r"peft_type 'IA3' cannot be served by vLLM"):
        check_servable_by_vllm({"peft_type": "IA3"}, where="a")


def test_served_rank_and_max_lora_rank():
    assert served_lora_rank({"peft_type": "NLORA", "r": 16, "residual": True}) == 32  # the rank-2r export
    assert served_lora_rank({"peft_type": "NLORA", "r": 16}) == 16
    assert served_lora_rank(LORA) == 16
    assert [vllm_max_lora_rank(ranks) for ranks in ([4], [8, 16], [17], [128, 129], [])] == [8, 16, 32, 256, 1]


def test_vllm_block_defaults(eval_dir, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else None)
    config = load_config(write_yaml(eval_dir, tiny_config(generation={"backend": "vllm",
                                                                      "vllm": {"max_model_len": 512}})))
    assert config.generation.vllm == VLLMSettings(max_model_len=512)
    with pytest.raises(ConfigError, match=r"^device: 'cuda:1' with generation.backend 'vllm'"):
        load_config(write_yaml(eval_dir, tiny_config(device="cuda:1", generation={"backend": "vllm"})))
    with pytest.raises(ConfigError, match=r"^generation\.vllm\.gpu_memory_utilization: expected a number"):
        load_config(write_yaml(eval_dir, tiny_config(generation={"backend": "vllm",
                                                                 "vllm": {"gpu_memory_utilization": 2}})))


class GreedyIdsGenerator:
    """What VLLMGenerator.generate_ids returns, made with HF greedy decoding of the unpadded ids."""

    def __init__(self, model, eos: int) -> None:
        self.model, self.eos = model, eos

    @torch.no_grad()
    def generate_ids(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, num_samples=1, stop=(), seed=0):
        assert temperature == 0.0 and num_samples == 1
        out = []
        for ids in prompts:
            tokens = self.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=self.eos, pad_token_id=self.eos)[0, len(ids):].tolist()
            out.append([tokens[: tokens.index(self.eos) + 1] if self.eos in tokens else tokens])
        return out


def test_engine_lm_handles_requests_as_lm_evals_hf_model(tiny_root):
    """Same contexts and gen_kwargs: EngineLM over greedy ids gives HFLM's strings (stop, EOS, decoding)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval_harness.lm_eval_engine import EngineLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_root / "base"))
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_root / "base"), dtype=torch.float32).eval()
    contexts = ["the answer is", "question : two plus two", "a b c d e f"]
    kwargs = [{"until": ["."], "do_sample": False, "max_gen_toks": 12}, {"until": ["zzz"], "max_gen_toks": 7}]
    requests = [Instance(request_type="generate_until", doc={}, arguments=(context, gen), idx=index)
                for index, (context, gen) in enumerate((c, g) for g in kwargs for c in contexts)]
    expected = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1).generate_until(requests)
    engine_lm = EngineLM(GreedyIdsGenerator(model, tokenizer.eos_token_id), tokenizer, max_length=1024)
    assert engine_lm.generate_until(requests) == expected
    assert len(set(expected)) > 1  # the requests give different strings, so equality is not trivial
