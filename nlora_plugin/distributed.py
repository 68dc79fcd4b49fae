"""Reading a full weight under DeepSpeed ZeRO-3, one layer at a time.

ZeRO-3 leaves each rank a shard of every parameter (``param.ds_id`` is set, ``param`` itself is
empty). The Nyström init needs the whole matrix of one layer: gather it, use it, release it, so peak
memory grows by one layer, never by the model. Without DeepSpeed (or without ZeRO-3) this is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def is_zero3_partitioned(param: torch.Tensor) -> bool:
    """True for a parameter that DeepSpeed ZeRO-3 has partitioned across ranks."""
    return hasattr(param, "ds_id")


@contextmanager
def full_weight(param: torch.Tensor, modify: bool = False) -> Iterator[torch.Tensor]:
    """Yield the complete tensor of `param`, gathered under ZeRO-3.

    With ``modify=True`` in-place changes made inside the block are kept: under ZeRO-3 rank 0's
    version is re-partitioned to every rank (all ranks compute the same init, see ``layer_seed``).
    """
    if not is_zero3_partitioned(param):
        yield param.data
        return
    import deepspeed  # only reached when DeepSpeed partitioned the model

    with deepspeed.zero.GatheredParameters([param], modifier_rank=0 if modify else None):
        yield param.data
