"""Under DeepSpeed ZeRO-3 (2 CPU processes, gloo) the Nyström init equals the single-process init."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaForCausalLM

from nlora_plugin import NLoraConfig

from .conftest import VENV_BIN, subprocess_env
from .zero3_init_worker import ADAPTER

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("zero3_init_worker.py")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_zero3_gathered_init_equals_single_process(tiny_decoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "zero3_adapter.pt"
    command = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               str(WORKER), str(tiny_decoder), str(out)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=420, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gathered = torch.load(out)
    reference_model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_decoder, dtype=torch.float32),
                                     NLoraConfig(**ADAPTER))
    reference = dict(reference_model.named_parameters())
    assert gathered.keys() == reference.keys()
    adapter_names = [name for name in reference if ".lora_" in name]
    assert len(adapter_names) == 3 * 14  # A, N, B on 7 linears x 2 blocks
    for name, tensor in gathered.items():  # adapters and (residual mode) the rewritten base weights
        torch.testing.assert_close(tensor, reference[name].detach(), atol=1e-6, rtol=1e-5, msg=name)
