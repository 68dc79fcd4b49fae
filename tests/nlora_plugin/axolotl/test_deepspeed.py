"""DeepSpeed ZeRO-2 and ZeRO-3 (2 CPU processes, gloo): the init equals the single-process init, IntTune trains."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaForCausalLM

from nlora_plugin import NLoraConfig

from .conftest import VENV_BIN, subprocess_env
from .deepspeed_worker import ADAPTER

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("deepspeed_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_init_equals_single_process_and_inttune_trains(stage: int, tiny_decoder: Path,
                                                                 tmp_path: Path) -> None:
    prefix = tmp_path / f"zero{stage}"
    command = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               str(WORKER), str(stage), str(tiny_decoder), str(prefix)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=420, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(f"{prefix}.rank{rank}.pt") for rank in (0, 1)]

    reference_model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_decoder, dtype=torch.float32),
                                     NLoraConfig(**ADAPTER))
    reference = {name: p.detach() for name, p in reference_model.named_parameters()}
    init, trained = ranks[0]["init"], ranks[0]["trained"]
    assert init.keys() == reference.keys()
    assert sum(".lora_" in name for name in init) == 3 * 14  # A, N, B on 7 linears x 2 blocks
    for name, tensor in init.items():  # adapters and the residual-rewritten base weights
        torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=1e-5, msg=name)

    for name, tensor in trained.items():
        torch.testing.assert_close(ranks[1]["trained"][name], tensor, msg=name)  # the ranks agree
        if ".lora_N." in name:
            assert not torch.equal(tensor, init[name]), f"{name} did not train"
        else:  # IntTune: A, B and the base stay exactly as initialised
            assert torch.equal(tensor, init[name]), f"{name} changed but is frozen"
    losses = ranks[0]["losses"]
    assert losses[-1] < losses[0], losses
