"""FSDP2 (`fully_shard`) with 2 CPU processes (torchrun, gloo): NLoRA added before sharding trains exactly as
one process does; added after sharding, its init on DTensor-sharded weights equals the unsharded one; the
adapter saved from rank 0 (a full state dict gathered there) loads with stock PEFT + the plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("fsdp2_worker.py")
TOLERANCE = 1e-6


def run_worker(out: Path, case: str, order: str) -> Path:
    repo = str(WORKER.parents[2])  # the checkout, importable in the workers (the PEFT 0.21 venv does not install it)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    if order in ("before", "after"):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(WORKER), str(out), case, order]
    else:
        command = [sys.executable, str(WORKER), str(out), case, order]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys() and first
    return max(float((first[name] - second[name]).abs().max()) for name in first)


def saved_logits(saved: Path) -> torch.Tensor:
    from peft import PeftModel

    sys.path.insert(0, str(WORKER.parent))
    try:
        from fsdp2_worker import batch, tiny_model
    finally:
        sys.path.remove(str(WORKER.parent))
    model = PeftModel.from_pretrained(tiny_model(), str(saved)).eval()
    with torch.no_grad():
        return model(input_ids=batch()).logits


@pytest.mark.parametrize("case", ["default", "residual", "inttune"])
def test_fsdp2_matches_one_process_and_saves_a_loadable_adapter(case: str, tmp_path: Path) -> None:
    single = run_worker(tmp_path / "single", case, "single")
    sharded = run_worker(tmp_path / "before", case, "before")
    trained = torch.load(single / "adapter.pt")
    difference = max_difference(trained, torch.load(sharded / "adapter.pt"))
    print(f"{case}: FSDP2 (2 ranks) vs 1 process, gathered adapter after 3 AdamW steps: max |Δ| = {difference:.2e}")
    assert difference <= TOLERANCE
    assert float((torch.load(sharded / "logits.pt") - torch.load(single / "logits.pt")).abs().max()) <= TOLERANCE
    # the adapter written by rank 0 from the gathered full state dict is the trained model
    reloaded = saved_logits(sharded / "saved")
    assert float((reloaded - torch.load(sharded / "logits.pt")).abs().max()) <= 1e-5


@pytest.mark.parametrize("case", ["default", "residual", "inttune"])
def test_nlora_added_after_fully_shard_initialises_as_unsharded(case: str, tmp_path: Path) -> None:
    """get_peft_model on a sharded model: the Nyström init gathers each DTensor weight (and, with residual,
    writes W - scale*B*N*A back into every rank's shard); init and forward equal the unsharded run."""
    reference = run_worker(tmp_path / "init", case, "single-init")
    sharded = run_worker(tmp_path / "after", case, "after")
    assert max_difference(torch.load(reference / "adapter.pt"), torch.load(sharded / "adapter.pt")) <= TOLERANCE
    assert float((torch.load(sharded / "logits.pt") - torch.load(reference / "logits.pt")).abs().max()) <= TOLERANCE
