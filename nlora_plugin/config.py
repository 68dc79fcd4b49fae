"""NLoraConfig: one PEFT config for SLoRA, NLoRA and IntTune (paper §3, §4.3, App. B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from peft.config import PeftConfig

from .nystrom import CoreChoice, IndexChoice
from .peft_type import NLORA_PEFT_TYPE

InitMethod = Literal["nlora", "slora"]
SloraNInit = Literal["kaiming", "gaussian"]
BiasChoice = Literal["none", "all", "lora_only"]
# NLoraConfig fields plain LoRA has no counterpart for, that users set (Axolotl's `nlora:` block, GLUE methods);
# init_method and train_only_intermediate are set by the method's name instead (nlora_plugin.methods).
OPTION_FIELDS = ("nystrom_core", "nystrom_index", "pinv_rtol", "residual", "slora_n_init", "seed")


def _invalid(field_name: str, value: object, fix: str) -> ValueError:
    return ValueError(f"NLoraConfig.{field_name}={value!r} is invalid: {fix}")


@dataclass
class NLoraConfig(PeftConfig):
    """Configuration of an SLoRA / NLoRA / IntTune adapter: delta_W = (alpha / r) · B·N·A.

    The defaults reproduce the authors' code: NLoRA with the first r rows and columns of W, the
    sampled block itself as N, no residual (the output moves at step 0), all three matrices trained.
    """

    r: int = field(default=8, metadata={"help": "Rank r: A is r×in, N is r×r, B is out×r. Paper: 128 (NLG), 8 (NLU)."})
    lora_alpha: float = field(
        default=8,
        metadata={"help": "Scale numerator: the adapter output is multiplied by lora_alpha / r. Paper: alpha = r."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input. Paper: 0."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (or a regex, or 'all-linear') to adapt, as in PEFT's LoraConfig. "
            "Paper: all linear layers for NLG; query/key/value (DeBERTa) or query/value (RoBERTa) for NLU."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names (or a regex) never to adapt."}
    )
    init_method: InitMethod = field(
        default="nlora",
        metadata={
            "help": "'nlora': A, N, B from a Nyström decomposition of the frozen weight (paper §3). "
            "'slora': A Kaiming-uniform, B zeros (delta_W = 0 at step 0), N per slora_n_init (App. B)."
        },
    )
    train_only_intermediate: bool = field(
        default=False,
        metadata={
            "help": "IntTune (paper §4.3): freeze lora_A and lora_B, train only lora_N (r² parameters a layer). "
            "The paper's IntTune learning rate is 2e-3 (NLG). Requires init_method='nlora'."
        },
    )
    nystrom_core: CoreChoice = field(
        default="sample",
        metadata={
            "help": "N for NLoRA. 'sample' (default, the authors' code): N = A_W, the sampled r×r block. "
            "'pinv': N = pinv(A_W) with singular values below pinv_rtol·σ_max dropped (the Nyström "
            "approximation of eq. 5). 'optimal': the least-squares core pinv(C)·W·pinv(R) for the same rows "
            "and columns, the closest to W they allow."
        },
    )
    nystrom_index: IndexChoice = field(
        default="first",
        metadata={
            "help": "Which r rows and columns of W to sample. 'first' (default, the authors' code); "
            "'random': uniform, seeded by `seed`; 'pivoted': DEIM pivots of W's approximate top-r singular "
            "vectors (randomized sketch, O(out·in·r))."
        },
    )
    pinv_rtol: float = field(
        default=1e-2,
        metadata={"help": "Relative singular-value cut-off of the pseudo-inverses used by 'pinv' and 'optimal'."},
    )
    residual: bool = field(
        default=False,
        metadata={
            "help": "If true, the frozen weight becomes W - scale·B·N·A so the model's output at step 0 is the "
            "pretrained one (PiSSA-style). Default false, as in the authors' code. The residual is recomputed "
            "from the original base weights when the adapter is loaded."
        },
    )
    slora_n_init: SloraNInit = field(
        default="kaiming",
        metadata={"help": "SLoRA's N: 'kaiming' uniform (paper's choice, App. B) or 'gaussian' (std 1/r)."},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of every random init (SLoRA's A and N, 'random' and 'pivoted' indices). Each layer draws "
            "from its own generator seeded by (seed, layer name), so the init does not depend on layer order "
            "or process count (ZeRO-3 ranks agree)."
        },
    )
    bias: BiasChoice = field(
        default="none", metadata={"help": "Which biases train, as in PEFT's LoraConfig."}
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Extra modules trained and saved in full, e.g. ['classifier'] for a GLUE head."},
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt these layer indices (as in PEFT)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list used with layers_to_transform (as in PEFT)."}
    )
    init_diagnostics: dict | None = field(
        default=None,
        metadata={"help": "Written at init, not set by users: how much the adapter changes each layer's weight at "
                  "step 0 (nlora_plugin.diagnostics), saved with the adapter and shown by eval-harness reports."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = NLORA_PEFT_TYPE
        self.target_modules = set(self.target_modules) if isinstance(self.target_modules, list) else self.target_modules
        self.exclude_modules = (
            set(self.exclude_modules) if isinstance(self.exclude_modules, list) else self.exclude_modules
        )
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise _invalid("r", self.r, "use a positive integer rank, e.g. r=8 (NLU) or r=128 (NLG)")
        if self.lora_alpha <= 0:
            raise _invalid("lora_alpha", self.lora_alpha, "use a positive number; the paper sets lora_alpha = r")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise _invalid("lora_dropout", self.lora_dropout, "use a probability in [0, 1); the paper uses 0")
        choices = {"init_method": InitMethod, "nystrom_core": CoreChoice, "nystrom_index": IndexChoice,
                   "slora_n_init": SloraNInit, "bias": BiasChoice}
        for name, choice in choices.items():
            allowed = get_args(choice)
            if getattr(self, name) not in allowed:
                raise _invalid(name, getattr(self, name), f"choose one of {', '.join(map(repr, allowed))}")
        if not 0.0 <= self.pinv_rtol < 1.0:
            raise _invalid("pinv_rtol", self.pinv_rtol, "use a relative cut-off in [0, 1), e.g. 1e-2")
        if self.train_only_intermediate and self.init_method == "slora":
            raise _invalid(
                "train_only_intermediate",
                True,
                "IntTune trains only N, and with init_method='slora' B starts at zero and stays frozen, so "
                "delta_W = B·N·A stays 0; use init_method='nlora' (the paper's IntTune)",
            )
        if self.residual and self.init_method == "slora":
            raise _invalid("residual", True, "SLoRA starts at delta_W = 0, so there is nothing to subtract; "
                           "use residual=False or init_method='nlora'")
