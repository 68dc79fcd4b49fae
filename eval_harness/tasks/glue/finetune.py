"""Fine-tune an encoder with one PEFT method on one sentence(-pair) task, then predict its eval split.

What is measured (written to training.json):
- `init_time_s`: wall time of `get_peft_model(model, config)` (the adapter's initialisation).
- `step_time_s`: median wall time of an optimizer step (forward, backward, AdamW, schedule), first steps
  excluded (the median, so a stall caused by other processes on a shared machine does not move it).
- `peak_memory_bytes`: on CUDA, `torch.cuda.max_memory_allocated` over training. On CPU there is no
  allocator counter, so it is the training-state bytes we can count exactly: every parameter (frozen
  included) + the gradients + the AdamW state + the largest set of tensors autograd saved for backward in
  one step (counted through `saved_tensors_hooks`, each storage once, parameters excluded). Counting costs
  about a fifth of a small model's step, so it runs only on a step whose padded batch is longer than every
  one counted before (every batch has the same size, and saved bytes grow with the length): the largest
  set is still counted exactly. It leaves out transient buffers freed inside an op, so it is a lower bound
  of the process's peak, equal for all methods.
- `loss_curve`: [step, mean training loss over the steps since the previous point] (at most ~100 points);
  the point of step 1 is the first batch's loss at the initial weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, get_cosine_schedule_with_warmup

from eval_harness.tasks.glue.methods import MethodSpec, build_peft_config

logger = logging.getLogger(__name__)

HEAD_MODULES = ["classifier"]  # the sequence-classification head of BERT/RoBERTa/DeBERTa, trained in full
TIMING_SKIP = 2  # first optimizer steps left out of the mean step time (allocation, lazy init)
CURVE_POINTS = 100


@dataclass(frozen=True)
class TrainSettings:
    """The `train:` block. Exactly one of `steps` and `epochs` sets the length."""

    steps: int | None = None
    epochs: float | None = 3.0
    batch_size: int = 32
    max_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    limit_train: int | None = None
    limit_eval: int | None = None


@dataclass(frozen=True)
class Example:
    """One item: a sentence or sentence pair with its label (class index or a float for regression)."""

    id: str
    text_a: str
    text_b: str | None
    label: int | float


@dataclass
class Encoded:
    """A tokenized split: unpadded token ids per example and the labels."""

    ids: list[str]
    features: list[dict[str, list[int]]]
    labels: torch.Tensor


@dataclass
class FinetuneResult:
    """What one fine-tune measured, and its predictions for each evaluation split."""

    predictions: list[list[int | float]]
    loss_curve: list[list[float]] = field(default_factory=list)
    init_time_s: float = 0.0
    step_time_s: float = 0.0
    peak_memory_bytes: int = 0
    trainable_params: int = 0
    steps: int = 0


def encode(tokenizer: Any, examples: Sequence[Example], *, max_length: int, regression: bool) -> Encoded:
    """Tokenize once (pairs truncated longest-first to `max_length`); shared by every method and seed."""
    firsts = [example.text_a for example in examples]
    seconds = [example.text_b for example in examples]
    pair = seconds and seconds[0] is not None
    encoded = tokenizer(firsts, seconds if pair else None, truncation=True, max_length=max_length)
    keys = [key for key in ("input_ids", "token_type_ids", "attention_mask") if key in encoded]
    features = [{key: encoded[key][index] for key in keys} for index in range(len(examples))]
    dtype = torch.float32 if regression else torch.long
    labels = torch.tensor([example.label for example in examples], dtype=dtype)
    return Encoded(ids=[example.id for example in examples], features=features, labels=labels)


def collate(tokenizer: Any, encoded: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example."""
    batch = tokenizer.pad([encoded.features[index] for index in indices], return_tensors="pt")
    batch["labels"] = encoded.labels[list(indices)]
    return dict(batch)


def total_steps(settings: TrainSettings, n_train: int) -> int:
    """Optimizer steps of a run: `steps`, or `epochs` over the training set."""
    if settings.steps is not None:
        return settings.steps
    return max(1, math.ceil(settings.epochs * math.ceil(n_train / settings.batch_size)))


def batch_order(n_train: int, *, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Shuffled batches, a fresh permutation each epoch, the same for every method with one seed."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n_train // batch_size)  # the last incomplete batch is dropped
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = torch.randperm(n_train, generator=generator).tolist()
        batches.extend(order[index * batch_size:(index + 1) * batch_size] for index in range(per_epoch))
    return batches[:steps]


class SavedTensorCounter:
    """Bytes autograd keeps for backward during one forward pass (each storage once, parameters excluded)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.param_storages = {param.untyped_storage().data_ptr() for param in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.param_storages and key not in self.seen:
            self.seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        self.seen.clear()
        self.bytes = 0
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters (all) + gradients + optimizer state, in bytes."""
    params = sum(param.numel() * param.element_size() for param in model.parameters())
    grads = sum(param.grad.numel() * param.grad.element_size() for param in model.parameters()
                if param.grad is not None)
    optim = sum(value.numel() * value.element_size() for state in optimizer.state.values()
                for value in state.values() if torch.is_tensor(value))
    return params + grads + optim


def load_classifier(model_dir: Path, *, num_labels: int, seed: int, device: torch.device) -> torch.nn.Module:
    """The pretrained encoder with a fresh head (seeded), classification or regression (num_labels=1)."""
    torch.manual_seed(seed)
    problem = "regression" if num_labels == 1 else "single_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels,
                                                               problem_type=problem)
    return model.to(device)


def finetune(
    *,
    model_dir: Path,
    tokenizer: Any,
    train: Encoded,
    evaluations: Sequence[Encoded],
    num_labels: int,
    spec: MethodSpec,
    seed: int,
    settings: TrainSettings,
    device: torch.device | str = "cpu",
    description: str = "",
) -> FinetuneResult:
    """Train `spec` on `train` with `seed` (head, adapter init, batch order), then predict each evaluation split."""
    device = torch.device(device)
    base = load_classifier(model_dir, num_labels=num_labels, seed=seed, device=device)
    config = build_peft_config(spec, head_modules=HEAD_MODULES, seed=seed)
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = get_peft_model(base, config)
    init_time = time.perf_counter() - started
    trainable = [param for param in model.parameters() if param.requires_grad]
    n_trainable = sum(param.numel() for param in trainable)

    steps = total_steps(settings, len(train.ids))
    decay = [param for param in trainable if param.ndim >= 2]
    no_decay = [param for param in trainable if param.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=spec.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(settings.warmup_ratio * steps), steps)
    counter = SavedTensorCounter(model)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    every = max(1, steps // CURVE_POINTS)
    curve: list[list[float]] = []
    window: list[float] = []
    step_times: list[float] = []
    peak_saved = 0
    longest_counted = 0  # padded length of the longest batch whose saved tensors were counted
    model.train()
    batches = batch_order(len(train.ids), batch_size=settings.batch_size, steps=steps, seed=seed)
    progress = tqdm(batches, desc=description or spec.label, unit="step", leave=False, mininterval=2.0)
    for step, indices in enumerate(progress, start=1):
        batch = {key: value.to(device) for key, value in collate(tokenizer, train, indices).items()}
        started = time.perf_counter()
        length = batch["input_ids"].shape[1]
        count_saved = length > longest_counted
        with counter.hooks() if count_saved else contextlib.nullcontext():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step == 1:
            state = state_bytes(model, optimizer)  # gradients and AdamW state exist from here on
        optimizer.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        if step > min(TIMING_SKIP, steps - 1):
            step_times.append(elapsed)
        if count_saved:
            longest_counted = length
            peak_saved = max(peak_saved, counter.bytes)
        window.append(float(loss.detach()))
        if step % every == 0 or step == steps:
            curve.append([step, sum(window) / len(window)])
            progress.set_postfix(loss=f"{curve[-1][1]:.4f}")
            window = []
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else state + peak_saved
    predictions = [predict(model, tokenizer, split, batch_size=settings.eval_batch_size,
                           regression=num_labels == 1, device=device) for split in evaluations]
    return FinetuneResult(
        predictions=predictions,
        loss_curve=curve,
        init_time_s=init_time,
        step_time_s=statistics.median(step_times),
        peak_memory_bytes=int(peak),
        trainable_params=n_trainable,
        steps=steps,
    )


@torch.no_grad()
def predict(model: torch.nn.Module, tokenizer: Any, data: Encoded, *, batch_size: int, regression: bool,
            device: torch.device) -> list[int | float]:
    """Class indices (argmax) or regression scores for every example, in order."""
    model.eval()
    order = sorted(range(len(data.ids)), key=lambda index: len(data.features[index]["input_ids"]))
    out: dict[int, int | float] = {}
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = collate(tokenizer, data, indices)
        batch.pop("labels")
        logits = model(**{key: value.to(device) for key, value in batch.items()}).logits.float().cpu()
        values = logits[:, 0].tolist() if regression else logits.argmax(dim=-1).tolist()
        out.update(zip(indices, values))
    return [out[index] for index in range(len(data.ids))]
