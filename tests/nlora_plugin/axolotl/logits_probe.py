"""Test-only Axolotl plugin: right after `axolotl train` has saved the adapter, record what the trained model does.

Listed in a test's `plugins:`; Axolotl calls `post_train(cfg, model)` with the in-memory trained model after
`save_trained_model`, so a test can compare the saved adapter against the model that produced it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from axolotl.integrations.base import BasePlugin
from axolotl.utils.dict import DictDefault

PROBE_IDS = [[101, 2023, 2003, 1037, 3231, 1997, 1996, 2731, 2944, 102]]  # fixed MiniLM-vocabulary token ids
PROBE_FILE = "trained_probe.pt"


class LogitsProbePlugin(BasePlugin):
    """Writes output_dir/trained_probe.pt: the trained model's logits on PROBE_IDS and its trainable names."""

    def post_train(self, cfg: DictDefault, model: torch.nn.Module) -> None:
        trainable = sorted(name for name, param in model.named_parameters() if param.requires_grad)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(PROBE_IDS)).logits.float().cpu()
        torch.save({"logits": logits, "trainable": trainable}, Path(cfg.output_dir) / PROBE_FILE)
