"""The ``nlora`` command: ``init-bench``, ``export-lora``, ``convert-lora`` and ``merge``.

Arguments are checked before any model is loaded; a bad one stops the command with a message that
names the argument and the fix (exit status 2). ``export-lora`` exits with status 1 when the exported
LoRA does not reproduce the NLoRA model's outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports wait until the arguments are known to be good
    import torch
    from peft import PeftModel

logger = logging.getLogger("nlora")

NLORA_PEFT_TYPE_NAME = "NLORA"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Files a tokenizer may consist of; `merge` copies those the base folder has.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
# PEFT task types -> the transformers Auto class whose head the adapter was trained with.
AUTO_CLASS_FOR_TASK = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "FEATURE_EXTRACTION": "AutoModel",
}
VERIFY_BATCH = (2, 16)  # random input_ids (batch, sequence) for the export check


class CliError(Exception):
    """A bad argument: the message names it and says how to fix it."""


# ---------------------------------------------------------------- argument checks (cheap, before loading)


def check_model_dir(path: Path, argument: str) -> Path:
    """A transformers checkpoint folder: exists and holds config.json."""
    if not path.is_dir():
        raise CliError(f"{argument} {path}: no such folder; pass the folder of a saved transformers model")
    if not (path / "config.json").is_file():
        raise CliError(
            f"{argument} {path}: no config.json in this folder; pass a folder written by "
            "model.save_pretrained(...) (a local path: hub names are not downloaded)"
        )
    try:
        json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise CliError(
            f"{argument} {path / 'config.json'}: not valid JSON ({error}); re-save the model"
        ) from error
    return path


def read_adapter_config(path: Path, argument: str) -> dict:
    """The adapter_config.json of a PEFT adapter folder."""
    if not path.is_dir():
        raise CliError(
            f"{argument} {path}: no such folder; pass the folder written by peft_model.save_pretrained(...)"
        )
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise CliError(
            f"{argument} {path}: no adapter_config.json in this folder; pass the folder written by "
            "peft_model.save_pretrained(...), not the base model or a checkpoint parent folder"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CliError(f"{argument} {config_file}: not valid JSON ({error}); re-save the adapter") from error
    if not isinstance(config, dict) or "peft_type" not in config:
        raise CliError(f"{argument} {config_file}: no 'peft_type' field; this is not a PEFT adapter config")
    return config


def check_output_dir(output: Path, overwrite: bool, inputs: Sequence[Path]) -> Path:
    """The output folder may be replaced only with --overwrite, and never if it is (or holds) an input."""
    resolved = output.resolve()
    for source in inputs:
        source = source.resolve()
        if resolved == source or resolved in source.parents:
            raise CliError(
                f"--output {output}: this is (or contains) the input folder {source}; choose another folder"
            )
    if output.exists() and not output.is_dir():
        raise CliError(f"--output {output}: exists and is not a folder; choose a folder path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise CliError(
            f"--output {output}: exists and is not empty; pass --overwrite to replace it or choose another folder"
        )
    return output


# ---------------------------------------------------------------- model loading


def model_class(base: Path, task_type: str | None):
    """The transformers class to load the base with: the adapter's task_type decides the head; without one
    (an adapter saved with no task_type), the base checkpoint's own ``architectures`` entry."""
    import transformers

    if task_type in AUTO_CLASS_FOR_TASK:
        return getattr(transformers, AUTO_CLASS_FOR_TASK[task_type])
    architectures = json.loads((base / "config.json").read_text()).get("architectures") or []
    if architectures and hasattr(transformers, architectures[0]):
        return getattr(transformers, architectures[0])
    return transformers.AutoModel


def load_base(base: Path, task_type: str | None, dtype: str) -> torch.nn.Module:
    """The base model with the head the adapter was trained with."""
    import torch

    cls = model_class(base, task_type)
    logger.info("loading base model %s as %s (dtype %s)", base, cls.__name__, dtype)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    return cls.from_pretrained(str(base), dtype=torch_dtype).eval()


def load_adapter(base_model: torch.nn.Module, adapter: Path) -> PeftModel:
    """Base + adapter through stock ``PeftModel.from_pretrained`` (NLoRA registered by importing nlora_plugin)."""
    from peft import PeftModel

    import nlora_plugin  # noqa: F401  (registers PeftType.NLORA)

    logger.info("loading adapter %s", adapter)
    return PeftModel.from_pretrained(base_model, str(adapter)).eval()


def _model_output(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    outputs = model(input_ids=input_ids)
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs[0]


def random_batch(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    """Random token ids (VERIFY_BATCH) within the model's vocabulary."""
    import torch

    vocab_size = model.config.vocab_size
    return torch.randint(0, vocab_size, VERIFY_BATCH, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- commands


def cmd_init_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.plot:
        check_matplotlib("--plot")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    block = bench.block_from_shapes(args.shape) if args.shape else bench.LLAMA2_7B_BLOCK
    try:
        result = bench.run_init_benchmark(
            block=block,
            blocks=args.blocks,
            r=args.r,
            methods=args.methods,
            repeats=args.repeats,
            budget_s=args.budget,
            full_svd=args.full_svd,
            seed=args.seed,
        )
    except bench.InvalidBenchmarkArgument as error:
        raise CliError(str(error)) from error
    print(bench.format_init_table(result))
    for line in bench.goal_report(result):
        print(line)
    if args.plot:
        bench.plot_init_times(result, str(args.plot))
        print(f"plot written to {args.plot}")
    return 0


def check_matplotlib(argument: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise CliError(
            f"{argument} needs matplotlib: pip install matplotlib (or the 'eval' extra)"
        ) from error


def cmd_export_lora(args: argparse.Namespace) -> int:
    check_model_dir(args.base, "--base")
    config = read_adapter_config(args.adapter, "--adapter")
    if config["peft_type"] != NLORA_PEFT_TYPE_NAME:
        raise CliError(
            f"--adapter {args.adapter}: peft_type is {config['peft_type']!r}, not 'NLORA'; export-lora converts NLoRA "
            "adapters to plain LoRA. A LoRA adapter needs no export; to bake any adapter into the weights use "
            "`nlora merge`."
        )
    check_output_dir(args.output, args.overwrite, [args.base, args.adapter])

    import torch

    import nlora_plugin
    from nlora_plugin.export import NonFiniteWeights

    task_type = config.get("task_type")
    nlora_model = load_adapter(load_base(args.base, task_type, "float32"), args.adapter)
    input_ids = random_batch(nlora_model)

    def verify(staging: Path) -> None:
        """Raise ExportCheckFailed unless the staged LoRA reproduces the NLoRA model (finite logits)."""
        logger.info("verifying: NLoRA model vs exported LoRA on a fresh base, random batch %s", VERIFY_BATCH)
        lora_model = load_adapter(load_base(args.base, task_type, "float32"), staging)
        with torch.no_grad():
            expected = _model_output(nlora_model, input_ids)
            actual = _model_output(lora_model, input_ids)
        max_diff = float((expected - actual).abs().max())
        scale = float(expected.abs().max())
        print(f"max |delta logits| = {max_diff:.3e}  (max |logits| = {scale:.3e}, tolerance {args.tolerance:.0e} "
              "x max(1, that))")
        if not (torch.isfinite(expected).all() and torch.isfinite(actual).all()):
            raise ExportCheckFailed("the logits hold NaN or Inf")
        if not max_diff <= args.tolerance * max(1.0, scale):
            raise ExportCheckFailed("the exported LoRA does not reproduce the NLoRA model")

    logger.info("writing plain LoRA adapter to %s", args.output)
    try:
        nlora_plugin.export_lora(nlora_model, args.output, overwrite=args.overwrite, verify=verify)
    except (ExportCheckFailed, NonFiniteWeights) as error:
        kept = " (the folder that was there is unchanged)" if args.output.exists() else ""
        print(f"export check FAILED: {error}; nothing was written to {args.output}{kept}", file=sys.stderr)
        return 1
    print(f"exported {args.adapter} -> {args.output} (peft_type LORA)")
    print("export check passed")
    return 0


class ExportCheckFailed(Exception):
    """The staged export does not reproduce the adapter; it is deleted, never published."""


def cmd_convert_lora(args: argparse.Namespace) -> int:
    """A PiSSA/OLoRA-style LoRA adapter rewritten as plain LoRA on the original base (nlora_plugin.convert)."""
    from .convert import base_rewrite, is_reproducible_on_load

    config = read_adapter_config(args.adapter, "--adapter")
    init = base_rewrite(config)
    if init is None:
        raise CliError(f"--adapter {args.adapter}: init_lora_weights={config.get('init_lora_weights')!r} does not "
                       "rewrite the base weight, so the adapter is already plain LoRA on the original base")
    if (args.base is None) == (args.initial_adapter is None):
        raise CliError("pass exactly one of --base (the original base model, to recompute a deterministic init) and "
                       "--initial-adapter (the step-0 adapter saved before training)")
    if args.base is not None:
        check_model_dir(args.base, "--base")
        if not is_reproducible_on_load(init):
            raise CliError(f"--base: init_lora_weights={init!r} is randomized or data-dependent, so its step-0 adapter "
                           "cannot be recomputed from the base; pass --initial-adapter (the adapter saved before "
                           "training), or retrain with the NLoRA Axolotl plugin listed, which saves it converted")
    else:
        initial = read_adapter_config(args.initial_adapter, "--initial-adapter")
        if (initial.get("r"), initial.get("init_lora_weights")) != (config.get("r"), init):
            raise CliError(f"--initial-adapter {args.initial_adapter}: r={initial.get('r')}, init_lora_weights="
                           f"{initial.get('init_lora_weights')!r} do not match the adapter's r={config.get('r')}, "
                           f"{init!r}; pass the step-0 adapter of this training run")
    sources = [path for path in (args.adapter, args.base, args.initial_adapter) if path is not None]
    check_output_dir(args.output, args.overwrite, sources)

    import tempfile

    import torch

    from .convert import convert_adapter_folder, recompute_initial_adapter

    with tempfile.TemporaryDirectory(prefix="nlora-initial-") as scratch:
        initial_dir = args.initial_adapter
        if initial_dir is None:
            logger.info("recomputing the step-0 %s adapter from %s", init, args.base)
            initial_dir = recompute_initial_adapter(args.adapter, args.base, Path(scratch) / "initial")
        convert_adapter_folder(args.adapter, initial_dir, args.output)
    print(f"converted {args.adapter} ({init}, r={config['r']}) -> {args.output} (plain LoRA, r={2 * int(config['r'])}, "
          "on the original base)")
    if args.base is None:
        return 0
    task_type = config.get("task_type")
    logger.info("verifying: PEFT's own reload of the %s adapter vs the plain LoRA, random batch %s", init, VERIFY_BATCH)
    original = load_adapter(load_base(args.base, task_type, "float32"), args.adapter)
    input_ids = random_batch(original)
    with torch.no_grad():
        expected = _model_output(original, input_ids)
        actual = _model_output(load_adapter(load_base(args.base, task_type, "float32"), args.output), input_ids)
    max_diff = float((expected - actual).abs().max())
    scale = float(expected.abs().max())
    print(f"max |delta logits| = {max_diff:.3e}  (max |logits| = {scale:.3e})")
    if not max_diff <= 1e-4 * max(1.0, scale):
        import shutil

        shutil.rmtree(args.output, ignore_errors=True)
        print("convert check FAILED: the plain LoRA does not reproduce the adapter; nothing was kept", file=sys.stderr)
        return 1
    print("convert check passed")
    return 0


def tokenizer_files(base: Path) -> list[Path]:
    """The tokenizer files the base folder has (`merge` writes them with the merged weights)."""
    return [base / name for name in TOKENIZER_FILES if (base / name).is_file()]


def cmd_merge(args: argparse.Namespace) -> int:
    check_model_dir(args.base, "--base")
    config = read_adapter_config(args.adapter, "--adapter")
    check_output_dir(args.output, args.overwrite, [args.base, args.adapter])

    from nlora_plugin import save_merged
    from nlora_plugin.export import NonFiniteWeights

    model = load_adapter(load_base(args.base, config.get("task_type"), args.dtype), args.adapter)
    logger.info("merging %s adapter into the base weights, writing %s", config["peft_type"], args.output)
    copied = tokenizer_files(args.base)
    try:
        save_merged(model, args.output, overwrite=args.overwrite, extra_files=copied)
    except NonFiniteWeights as error:
        print(f"merge FAILED: {error}", file=sys.stderr)
        return 1
    print(f"merged {config['peft_type']} adapter {args.adapter} into {args.base} -> {args.output}")
    print(f"tokenizer files copied: {', '.join(p.name for p in copied) if copied else 'none found in --base'}")
    return 0


# ---------------------------------------------------------------- parser


def _shape(text: str) -> tuple[int, int]:
    from .bench import parse_shape

    try:
        return parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from .bench import DEFAULT_METHODS, METHODS

    parser = argparse.ArgumentParser(
        prog="nlora", description="NLoRA tools: init-time benchmark, LoRA export, PiSSA-to-LoRA conversion, merge."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only print results, no progress messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser(
        "init-bench",
        help="time NLoRA/SLoRA initialisation against PEFT LoRA and PiSSA",
        description="Time get_peft_model(...) of each method on a stack of nn.Linear layers (float32, CPU). "
        "Default: 4 blocks of LLaMA-2-7B's seven projections (about 2.8 GB), r = 128.",
    )
    bench.add_argument(
        "--shape",
        action="append",
        type=_shape,
        metavar="OUTxIN",
        help="one layer of a block (repeatable), e.g. --shape 4096x4096 --shape 11008x4096; "
        "default: q,k,v,o 4096x4096, gate,up 11008x4096, down 4096x11008",
    )
    bench.add_argument("--blocks", type=_positive_int, default=4, help="blocks in the stack (default 4)")
    bench.add_argument(
        "--r", type=_positive_int, default=128, help="rank (default 128, as the paper's NLG runs)"
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(DEFAULT_METHODS),
        metavar="METHOD",
        help=f"methods to time (default all but nlora_pivoted_optimal): {', '.join(METHODS)}",
    )
    bench.add_argument(
        "--repeats", type=_positive_int, default=3, help="max runs per method, medians reported"
    )
    bench.add_argument(
        "--budget", type=float, default=5.0, help="stop repeating a method after this many seconds"
    )
    bench.add_argument(
        "--full-svd",
        action="store_true",
        help="time full-SVD PiSSA on the whole stack (minutes per block on 2 cores) instead of one layer per shape",
    )
    bench.add_argument(
        "--threads", type=_positive_int, help="torch.set_num_threads (default: torch's choice)"
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    bench.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="also draw the stack times as a bar chart"
    )
    bench.set_defaults(handler=cmd_init_bench)

    export = commands.add_parser(
        "export-lora",
        help="convert an NLoRA adapter into an exact plain PEFT LoRA adapter",
        description="Fold lora_N into lora_A (and add the residual's initial product, if any) so that stock PEFT, "
        "vLLM and other LoRA tools load the adapter; then check outputs on a random batch.",
    )
    merge = commands.add_parser(
        "merge",
        help="write base + adapter (NLoRA or LoRA) as one merged transformers checkpoint",
        description="Merge the adapter into the base weights, save a plain transformers checkpoint and copy the "
        "base folder's tokenizer files.",
    )
    for sub in (export, merge):
        sub.add_argument("--base", type=Path, required=True, metavar="MODEL_DIR", help="base model folder")
        sub.add_argument(
            "--adapter", type=Path, required=True, metavar="ADAPTER_DIR", help="PEFT adapter folder"
        )
        sub.add_argument("--output", type=Path, required=True, metavar="OUT_DIR", help="folder to write")
        sub.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="fail if max |delta logits| > tolerance x max(1, max |logits|) (default 1e-4; float32)",
    )
    export.set_defaults(handler=cmd_export_lora)
    convert = commands.add_parser(
        "convert-lora",
        help="rewrite a PiSSA/OLoRA LoRA adapter as plain LoRA on the original base (rank 2r, same scale)",
        description="PEFT rebuilds a PiSSA/OLoRA adapter's residual base when it loads it (randomly for "
        "pissa_niter_*). The trained model is W + s(BA - B0A0): written as a plain LoRA A'=[A; A0], B'=[B, -B0], "
        "any tool loads it on the untouched base. Needs the step-0 adapter: recomputed from --base for pissa/olora, "
        "or given as --initial-adapter.",
    )
    convert.add_argument("--adapter", type=Path, required=True, metavar="ADAPTER_DIR", help="trained LoRA adapter")
    convert.add_argument("--base", type=Path, metavar="MODEL_DIR", help="original base model (pissa, olora)")
    convert.add_argument("--initial-adapter", type=Path, metavar="ADAPTER_DIR",
                         help="the step-0 adapter saved before training (any init, pissa_niter_* included)")
    convert.add_argument("--output", type=Path, required=True, metavar="OUT_DIR", help="folder to write")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    convert.set_defaults(handler=cmd_convert_lora)
    merge.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="dtype to load and save the merged model in (default auto: the base checkpoint's)",
    )
    merge.set_defaults(handler=cmd_merge)
    return parser


@contextmanager
def cli_logging(quiet: bool) -> Iterator[None]:
    """Progress messages of this command and of nlora_plugin on stderr while the command runs.

    Other libraries keep their settings, and the loggers are put back afterwards (main() may run in-process).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("nlora: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("nlora", "nlora_plugin")]
    saved = [(each.handlers, each.level, each.propagate) for each in loggers]
    for each in loggers:
        each.handlers = [handler]
        each.setLevel(logging.WARNING if quiet else logging.INFO)
        each.propagate = False
    try:
        yield
    finally:
        for each, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            each.handlers, each.propagate = handlers, propagate
            each.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with cli_logging(quiet=args.quiet):
            return args.handler(args)
    except (CliError, FileExistsError) as error:
        parser.exit(2, f"nlora {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
