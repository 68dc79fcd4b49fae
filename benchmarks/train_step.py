"""Training step time and peak memory of SLoRA, NLoRA and IntTune against PEFT LoRA at the same r.

Every method trains the same small Llama (built in-process, seeded) on the same batch with AdamW and
the same torch thread count.

- Time: all methods live in one process and their steps are interleaved (one step of each method per
  round, the order rotating), so load from other processes on a shared machine hits them alike. The
  table reports each method's median step time after warm-up and the median of its per-round ratio to
  LoRA's step in the same round.
- Memory: each method runs a few steps in fresh subprocesses (median of --memory-rounds): the training
  peak RSS above the RSS just before the first step (the kernel's high-water mark is reset there:
  activations, gradients and optimizer state), the process's peak RSS, and exact tensor bytes: trainable
  parameters + gradients + AdamW state, and the activations autograd saves for backward. RSS varies by a
  few percent from process to process (allocator state), so the memory goals are judged on the exact
  bytes.

    python -m benchmarks.train_step [--hidden 512] [--layers 4] [--r 16] [--batch 4] [--seq 128]
                                    [--steps 20] [--warmup 2] [--memory-steps 3] [--memory-rounds 2]
                                    [--threads 2] [--plot F.png]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("lora", "slora", "nlora", "inttune")
BASELINE = "lora"
GOALS = {"slora": 1.05, "nlora": 1.05, "inttune": 0.9}  # the step-time ratio to LoRA each must stay within


def build_model(args: argparse.Namespace, method: str):
    """A small Llama with random weights (std 0.02) and the adapter of `method` on all linear layers."""
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from nlora_plugin.methods import METHODS

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
    adapter = METHODS[method].peft_config(**common)
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


def make_training(args: argparse.Namespace, method: str):
    """(step function, model, optimizer, batch) of `method`; the step returns the loss."""
    import torch

    model = build_model(args, method)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))

    def step() -> float:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, model, optimizer, batch


def time_interleaved(args: argparse.Namespace) -> dict[str, dict]:
    """Step times of every method, one step of each per round (rotating order), in this process."""
    import torch

    torch.set_num_threads(args.threads)
    steps = {method: make_training(args, method)[0] for method in args.methods}
    times: dict[str, list[float]] = {method: [] for method in args.methods}
    losses: dict[str, list[float]] = {method: [] for method in args.methods}
    for round_index in range(args.warmup + args.steps):
        shift = round_index % len(args.methods)
        for method in args.methods[shift:] + args.methods[:shift]:
            start = time.perf_counter()
            losses[method].append(steps[method]())
            if round_index >= args.warmup:
                times[method].append(time.perf_counter() - start)
        print(f"step round {round_index + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
    return {
        method: {
            "step_s": statistics.median(times[method]),
            "ratio": statistics.median(
                t / base for t, base in zip(times[method], times[BASELINE], strict=True)
            ),
            "first_loss": losses[method][0],
            "last_loss": losses[method][-1],
        }
        for method in args.methods
    }


def saved_activation_bytes(model, batch) -> int:
    """Exact bytes of the tensors autograd keeps for backward in one step (parameters excluded)."""
    import torch

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=batch, labels=batch).loss
    del loss
    return sum(saved.values())


def memory_worker(args: argparse.Namespace) -> None:
    """Train `args.worker` for --memory-steps steps and print one JSON line of memory measurements."""
    import torch

    torch.set_num_threads(args.threads)
    step, model, optimizer, batch = make_training(args, args.worker)
    trainable = [p for p in model.parameters() if p.requires_grad]
    rss_before = rss_kib("VmRSS")
    peak_reset = reset_peak_rss()
    for _ in range(args.memory_steps):
        step()
    state_bytes = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim()
    )
    param_bytes = sum(p.numel() * p.element_size() for p in trainable)
    result = {
        "trainable": sum(p.numel() for p in trainable),
        "adapter_state_bytes": 2 * param_bytes + state_bytes,  # params + grads + AdamW moments
        "training_peak_kib": rss_kib("VmHWM") - rss_before if peak_reset else None,
        "activation_bytes": saved_activation_bytes(model, batch),
        "process_peak_kib": max(rss_kib("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }
    print(json.dumps(result))


def run_memory_worker(method: str, args: argparse.Namespace) -> dict:
    """The memory measurements of `method` from a fresh subprocess."""
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", method]
    for name in ("hidden", "layers", "r", "batch", "seq", "vocab", "memory_steps", "threads", "lr"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    from eval_harness.offline import offline_env

    env = offline_env()
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"{method} memory run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_memory(runs: list[dict]) -> dict:
    """Median over fresh-process runs of each memory figure (RSS varies run to run by a few percent)."""
    peaks = [run["training_peak_kib"] for run in runs]
    return {
        **runs[0],
        "training_peak_kib": None if None in peaks else statistics.median(peaks),
        "process_peak_kib": statistics.median(run["process_peak_kib"] for run in runs),
    }


def exact_bytes(memory: dict) -> int:
    """Tensor bytes a step needs beyond the frozen model: adapter params + grads + AdamW + saved activations."""
    return memory["adapter_state_bytes"] + memory["activation_bytes"]


def mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f}"


def report(times: dict[str, dict], memory: dict[str, dict], args: argparse.Namespace) -> str:
    """Markdown table with ratios to LoRA, then the goal lines."""
    base_peak = memory[BASELINE]["training_peak_kib"]
    header = (
        "| method | trainable | step s | x LoRA | training peak MiB | x LoRA | process peak MiB "
        "| params+grads+AdamW MiB | saved activations MiB | exact total x LoRA | loss first -> last |"
    )
    lines = [header, "|" + "---|" * 11]
    for method in args.methods:
        t, m = times[method], memory[method]
        peak = m["training_peak_kib"]
        peak_ratio = "n/a" if peak is None or not base_peak else f"{peak / base_peak:.3f}"
        lines.append(
            f"| {method} | {m['trainable']:,} | {t['step_s']:.3f} | {t['ratio']:.3f} | {mib(peak)} | {peak_ratio} "
            f"| {mib(m['process_peak_kib'])} | {m['adapter_state_bytes'] / 2**20:.2f} "
            f"| {m['activation_bytes'] / 2**20:.1f} | {exact_bytes(m) / exact_bytes(memory[BASELINE]):.3f} "
            f"| {t['first_loss']:.3f} -> {t['last_loss']:.3f} |"
        )
    lines.append(
        f"\nLlama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, r = {args.r} on all linear "
        f"layers, batch {args.batch} x seq {args.seq}, AdamW, float32, CPU, {args.threads} threads. Time: median "
        f"of {args.steps} interleaved steps after {args.warmup} warm-up (x LoRA: median of per-round ratios). "
        f"Memory: median of {args.memory_rounds} fresh processes per method, {args.memory_steps} steps each; "
        "training peak = peak RSS during the steps - RSS before them."
    )
    for method, goal in GOALS.items():
        if method in times:
            ratio = times[method]["ratio"]
            verdict = "met" if ratio <= goal else "MISSED"
            lines.append(f"goal {method} step time <= {goal:.2f}x LoRA: {ratio:.3f} -> {verdict}")
    for method in ("slora", "nlora"):
        if method in memory:
            ratio = exact_bytes(memory[method]) / exact_bytes(memory[BASELINE])
            verdict = "met" if ratio <= GOALS[method] else "MISSED"
            lines.append(f"goal {method} exact memory <= {GOALS[method]:.2f}x LoRA: {ratio:.3f} -> {verdict}")
    if "inttune" in memory:
        exact = exact_bytes(memory["inttune"]) / exact_bytes(memory[BASELINE])
        peak = memory["inttune"]["training_peak_kib"]
        rss = (
            ""
            if peak is None or base_peak is None
            else f", training peak RSS {mib(peak)} vs {mib(base_peak)} MiB"
        )
        verdict = "met" if exact < 1.0 else "MISSED"
        lines.append(f"goal inttune lower memory than LoRA: exact {exact:.3f}x{rss} -> {verdict}")
    return "\n".join(lines)


def plot(times: dict[str, dict], memory: dict[str, dict], args: argparse.Namespace, path: str) -> None:
    """Two bar charts: step time and training peak memory of each method relative to LoRA (goal lines dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_peak = memory[BASELINE]["training_peak_kib"] or 1
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    time_axis.bar(args.methods, [times[m]["ratio"] for m in args.methods])
    memory_axis.bar(args.methods, [(memory[m]["training_peak_kib"] or 0) / base_peak for m in args.methods])
    for goal in sorted(set(GOALS.values())):
        time_axis.axhline(goal, linestyle="--", color="grey", linewidth=1)
    time_axis.set(title="step time / LoRA's (goals dashed)")
    memory_axis.set(title="training peak RSS / LoRA's")
    for axis in (time_axis, memory_axis):
        axis.axhline(1.0, color="black", linewidth=1)
    figure.suptitle(
        f"Llama hidden {args.hidden} x {args.layers} layers, r = {args.r}, {args.threads} CPU threads"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


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
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each method (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps of each method first (default 2)"
    )
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of each memory run (default 3)")
    parser.add_argument(
        "--memory-rounds",
        type=int,
        default=2,
        help="fresh-process memory runs per method, median kept (default 2)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads in every run (default 2)"
    )
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="AdamW learning rate (does not change the cost)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the ratios to LoRA as bar charts")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hidden % 64 or args.hidden < 64:
        parser.error(f"--hidden {args.hidden}: use a positive multiple of 64 (heads of size 64)")
    if not 1 <= args.r <= args.hidden:
        parser.error(f"--r {args.r}: use 1 <= r <= hidden ({args.hidden})")
    if (
        min(
            args.layers,
            args.batch,
            args.seq,
            args.vocab,
            args.steps,
            args.memory_steps,
            args.memory_rounds,
            args.threads,
        )
        < 1
        or args.warmup < 0
    ):
        parser.error(
            "--layers, --batch, --seq, --vocab, --steps, --memory-steps, --memory-rounds, --threads must be positive"
        )
    if BASELINE not in args.methods:
        args.methods.insert(0, BASELINE)  # every ratio needs the baseline of the same run
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        memory_worker(args)
        return
    memory_runs: dict[str, list[dict]] = {method: [] for method in args.methods}
    for round_index in range(args.memory_rounds):
        for method in args.methods:
            print(f"memory run {round_index + 1}/{args.memory_rounds}: {method}", file=sys.stderr, flush=True)
            memory_runs[method].append(run_memory_worker(method, args))
    memory = {method: median_memory(runs) for method, runs in memory_runs.items()}
    times = time_interleaved(args)
    print(report(times, memory, args))
    if args.plot:
        plot(times, memory, args, args.plot)


if __name__ == "__main__":
    main()
