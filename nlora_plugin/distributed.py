"""Reading (and rewriting) one full weight under DeepSpeed ZeRO-3 or FSDP2, one layer at a time.

ZeRO-3 leaves each rank a shard of every parameter (``param.ds_id`` is set, ``param`` itself is
empty); FSDP2 (``torch.distributed.fsdp.fully_shard``) turns each parameter into a ``DTensor`` whose
local tensor is one rank's shard. The Nyström init needs the whole matrix of one layer: gather it, use
it, release it, so peak memory grows by one layer, never by the model. Without either (a plain tensor)
this is a no-op. Every rank must enter :func:`full_weight` for the same parameters in the same order
(both gathers are collectives); the init does, because every rank adapts the same modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def is_zero3_partitioned(param: torch.Tensor) -> bool:
    """True for a parameter that DeepSpeed ZeRO-3 has partitioned across ranks."""
    return hasattr(param, "ds_id")


def is_dtensor(param: torch.Tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (an FSDP2-sharded parameter)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(param, DTensor) or isinstance(getattr(param, "data", None), DTensor)


@contextmanager
def _full_dtensor(param: torch.Tensor, modify: bool) -> Iterator[torch.Tensor]:
    """All-gather a DTensor; with ``modify``, rank 0's full tensor is re-sharded into every rank's shard."""
    from torch.distributed.tensor import distribute_tensor

    sharded = param.data
    full = sharded.full_tensor()
    yield full
    if modify:
        # distribute_tensor scatters rank 0's data (src_data_rank=0), as ZeRO-3's modifier_rank=0 does
        resharded = distribute_tensor(full, sharded.device_mesh, sharded.placements)
        with torch.no_grad():
            sharded.to_local().copy_(resharded.to_local())


@contextmanager
def full_weight(param: torch.Tensor, modify: bool = False) -> Iterator[torch.Tensor]:
    """Yield the complete tensor of `param`, gathered under ZeRO-3 or FSDP2.

    With ``modify=True`` in-place changes made inside the block are kept: a sharded parameter gets
    rank 0's version on every rank (all ranks compute the same init, see ``layer_seed``).
    """
    if is_dtensor(param):
        with _full_dtensor(param, modify) as full:
            yield full
        return
    if not is_zero3_partitioned(param):
        yield param.data
        return
    import deepspeed  # only reached when DeepSpeed partitioned the model

    with deepspeed.zero.GatheredParameters([param], modifier_rank=0 if modify else None):
        yield param.data
