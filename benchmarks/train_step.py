"""Training step time and peak memory of SLoRA, NLoRA and IntTune against PEFT LoRA at the same r.

Each method trains the same small Llama (built in-process, seeded) on the same batch with AdamW, in a
fresh subprocess so that its peak memory is its own. Methods are interleaved round by round (the order
rotates each round) with the same torch thread count, and the table reports the median over rounds of
each run's median step time after warm-up, with ratios to LoRA measured in the same run.

Memory, per method: the training peak RSS above the RSS just before the first step (the kernel's
high-water mark is reset there: activations, gradients and optimizer state), the process's peak RSS,
and the exact bytes of trainable parameters + gradients + AdamW state.

    python -m benchmarks.train_step [--hidden 512] [--layers 4] [--r 16] [--batch 4] [--seq 128]
                                    [--steps 8] [--warmup 2] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("lora", "slora", "nlora", "inttune")
BASELINE = "lora"
GOALS = {"slora": 1.05, "nlora": 1.05, "inttune": 0.9}  # time ratio to LoRA the issue asks for


def build_model(args: argparse.Namespace):
    """A small Llama with random weights (std 0.02) and the adapter of `args.method` on all linear layers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from nlora_plugin import NLoraConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        vocab_size=args.vocab,
        max_position_embeddings=args.seq,
    )
    model = LlamaForCausalLM(config)
    common = {"r": args.r, "lora_alpha": args.r, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
    adapter = {
        "lora": lambda: LoraConfig(**common),
        "slora": lambda: NLoraConfig(init_method="slora", **common),
        "nlora": lambda: NLoraConfig(**common),
        "inttune": lambda: NLoraConfig(train_only_intermediate=True, **common),
    }[args.method]()
    return get_peft_model(model, adapter).train()


def rss_kib(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the next peak is that of training alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> None:
    """Train `args.method` for warm-up + steps and print one JSON line of measurements."""
    import torch

    torch.set_num_threads(args.threads)
    model = build_model(args)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    rss_before = rss_kib("VmRSS")
    peak_reset = reset_peak_rss()
    step_times, losses = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            step_times.append(time.perf_counter() - start)
        losses.append(float(loss))
    state_bytes = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim()
    )
    param_bytes = sum(p.numel() * p.element_size() for p in trainable)
    print(
        json.dumps(
            {
                "method": args.method,
                "step_s": statistics.median(step_times),
                "trainable": sum(p.numel() for p in trainable),
                "adapter_state_bytes": 2 * param_bytes + state_bytes,  # params + grads + AdamW moments
                "rss_before_kib": rss_before,
                "peak_kib": rss_kib("VmHWM"),
                "peak_is_training_only": peak_reset,
                "first_loss": losses[0],
                "last_loss": losses[-1],
            }
        )
    )


def run_worker(method: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", method]
    for name in ("hidden", "layers", "r", "batch", "seq", "vocab", "steps", "warmup", "threads", "lr"):
        command += [f"--{name}", str(getattr(args, name))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1]
    )
    if done.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """Markdown table of medians over rounds, ratios to LoRA, then the goal lines."""
    step = {m: statistics.median(r["step_s"] for r in runs[m]) for m in runs}
    training_peak = {m: statistics.median(r["peak_kib"] - r["rss_before_kib"] for r in runs[m]) for m in runs}
    header = (
        "| method | trainable | step s | x LoRA | training peak MiB | x LoRA | process peak MiB | adapter state MiB "
        "| loss first -> last |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for method, method_runs in runs.items():
        first = method_runs[0]
        lines.append(
            f"| {method} | {first['trainable']:,} | {step[method]:.3f} | {step[method] / step[BASELINE]:.3f} "
            f"| {mib(training_peak[method])} | {training_peak[method] / training_peak[BASELINE]:.3f} "
            f"| {mib(statistics.median(r['peak_kib'] for r in method_runs))} "
            f"| {first['adapter_state_bytes'] / 2**20:.2f} | {first['first_loss']:.3f} -> {first['last_loss']:.3f} |"
        )
    lines.append(
        f"\nLlama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, r = {args.r} on all linear layers, "
        f"batch {args.batch} x seq {args.seq}, AdamW, float32, CPU, {args.threads} threads; median over "
        f"{args.rounds} round(s) of the median of {args.steps} steps after {args.warmup} warm-up; each run a fresh "
        "process. training peak = peak RSS during the steps - RSS before them."
    )
    for method, goal in GOALS.items():
        if method in step:
            ratio = step[method] / step[BASELINE]
            lines.append(
                f"goal {method} step time <= {goal:.2f}x LoRA: {ratio:.3f} -> {'met' if ratio <= goal else 'MISSED'}"
            )
    if "inttune" in runs:
        lower = training_peak["inttune"] < training_peak[BASELINE]
        lines.append(
            f"goal inttune lower memory than LoRA: training peak {mib(training_peak['inttune'])} vs "
            f"{mib(training_peak[BASELINE])} MiB -> {'met' if lower else 'MISSED'}"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=512, help="hidden size, a multiple of 64 (default 512)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument(
        "--r", type=int, default=16, help="rank of every method (default 16 = hidden/32, as 128/4096)"
    )
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size (default 2048)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every method, interleaved (default 2)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads in every run (default 2)"
    )
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="AdamW learning rate (does not change the cost)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hidden % 64 or args.hidden < 64:
        parser.error(f"--hidden {args.hidden}: use a positive multiple of 64 (heads of size 64)")
    if not 1 <= args.r <= args.hidden:
        parser.error(f"--r {args.r}: use 1 <= r <= hidden ({args.hidden})")
    if (
        min(args.layers, args.batch, args.seq, args.vocab, args.steps, args.rounds, args.threads) < 1
        or args.warmup < 0
    ):
        parser.error("--layers, --batch, --seq, --vocab, --steps, --rounds and --threads must be positive")
    if BASELINE not in args.methods:
        args.methods.insert(0, BASELINE)  # every ratio needs the baseline of the same run
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        args.method = args.worker
        worker(args)
        return
    runs: dict[str, list[dict]] = {method: [] for method in args.methods}
    for round_index in range(args.rounds):
        order = (
            args.methods[round_index % len(args.methods) :] + args.methods[: round_index % len(args.methods)]
        )
        for method in order:
            print(f"round {round_index + 1}/{args.rounds}: {method}", file=sys.stderr, flush=True)
            runs[method].append(run_worker(method, args))
    print(report(runs, args))


if __name__ == "__main__":
    main()
