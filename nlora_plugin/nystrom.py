"""Nyström factors of a frozen weight: pure tensor math, no modules, no side effects.

Notation. The paper (§3, eq. 4–6) writes a layer as ``Y = X W`` with ``W ∈ R^{m×n}``; a torch
``nn.Linear`` stores ``W_t = Wᵀ ∈ R^{out×in}``. NLoRA samples row indices ``I ⊂ in`` and column indices
``J ⊂ out`` of the paper's W and sets (paper §3, Fig. 3)

    A ← W[:, J]      →  lora_A.weight = W_t[J, :]            (r × in)
    B ← W[I, :]      →  lora_B.weight = W_t[:, I]            (out × r)
    N ← A_W^+ or A_W →  lora_N.weight = core(W_t[J, I])      (r × r)

so that ``lora_B.weight @ lora_N.weight @ lora_A.weight`` is the paper's ``(A N B)ᵀ``. With the
authors' choices (first r indices, ``N = A_W``) this is ``W_t[:r, :]``, ``W_t[:, :r]``, ``W_t[:r, :r]``.
Every function here works in float32 whatever the input dtype (``torch.linalg.pinv`` has no bf16 kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

IndexChoice = Literal["first", "random", "pivoted"]
CoreChoice = Literal["sample", "pinv", "optimal"]
INDEX_CHOICES: tuple[str, ...] = get_args(IndexChoice)  # the one list of nystrom_index values
CORE_CHOICES: tuple[str, ...] = get_args(CoreChoice)  # the one list of nystrom_core values

SKETCH_OVERSAMPLING = 8
SKETCH_POWER_ITERATIONS = 1


@dataclass(frozen=True)
class NystromFactors:
    """The three SLoRA matrices in torch layout (float32) and the indices they were sampled at."""

    lora_A: torch.Tensor  # r × in   = W_t[J, :]
    lora_N: torch.Tensor  # r × r
    lora_B: torch.Tensor  # out × r  = W_t[:, I]
    row_index: torch.Tensor  # I ⊂ in  (the paper's sampled rows of W)
    col_index: torch.Tensor  # J ⊂ out (the paper's sampled columns of W)

    def product(self) -> torch.Tensor:
        """``B N A`` in torch layout (out × in): the adapter's delta weight before scaling."""
        return self.lora_B @ self.lora_N @ self.lora_A


def select_indices(
    weight: torch.Tensor, r: int, method: IndexChoice, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose r input indices I (rows of the paper's W) and r output indices J (its columns).

    - ``first``: the first r of each, as in the authors' code.
    - ``random``: uniform without replacement (seeded by ``generator``).
    - ``pivoted``: DEIM (greedy pivoting, Sorensen & Embree 2016) on approximate top-r singular
      vectors from a randomized range finder: the rows and columns that best span W's dominant
      subspace, at O(out·in·r) cost instead of an SVD.
    """
    out_features, in_features = weight.shape
    if method == "first":
        return torch.arange(r), torch.arange(r)
    if method == "random":
        rows = torch.randperm(in_features, generator=generator)[:r].sort().values
        cols = torch.randperm(out_features, generator=generator)[:r].sort().values
        return rows, cols
    if method == "pivoted":
        left, right = approximate_singular_vectors(weight, r, generator)
        return deim_indices(right), deim_indices(left)
    raise ValueError(f"nystrom_index={method!r} is not one of {', '.join(map(repr, INDEX_CHOICES))}")


def approximate_singular_vectors(
    weight: torch.Tensor, r: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-r left (out × r) and right (in × r) singular vectors of ``weight``.

    Randomized range finder with oversampling and one power iteration (Halko et al. 2011, Alg. 4.4).
    """
    w = weight.float()
    width = min(r + SKETCH_OVERSAMPLING, *w.shape)
    omega = torch.randn(w.shape[1], width, generator=generator, dtype=w.dtype).to(w.device)
    basis = torch.linalg.qr(w @ omega).Q
    for _ in range(SKETCH_POWER_ITERATIONS):
        basis = torch.linalg.qr(w.T @ basis).Q
        basis = torch.linalg.qr(w @ basis).Q
    small_u, _, small_vh = torch.linalg.svd(basis.T @ w, full_matrices=False)
    return (basis @ small_u)[:, :r], small_vh[:r].T


def deim_indices(vectors: torch.Tensor) -> torch.Tensor:
    """DEIM point selection: one index per column of ``vectors`` (n × r), greedy on the residual."""
    r = vectors.shape[1]
    chosen = [int(vectors[:, 0].abs().argmax())]
    for k in range(1, r):
        basis = vectors[:, :k]
        coeff = torch.linalg.solve(basis[chosen], vectors[chosen, k])
        residual = vectors[:, k] - basis @ coeff
        residual[chosen] = 0.0
        chosen.append(int(residual.abs().argmax()))
    return torch.tensor(sorted(chosen), dtype=torch.long)


def guarded_pinv(matrix: torch.Tensor, rtol: float) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse that drops singular values below ``rtol · σ_max``.

    The sampled block A_W of a real weight is often ill-conditioned; without the cut-off its
    pseudo-inverse explodes (errors up to 83× ‖W‖ on MiniLM's weights: benchmarks/reconstruction.py).
    """
    return torch.linalg.pinv(matrix.float(), rtol=rtol)


def check_finite_weight(weight: torch.Tensor, layer: str) -> None:
    """Refuse a base weight with NaN/Inf before the Nyström init samples it (naming `layer`)."""
    finite = torch.isfinite(weight)
    if not bool(finite.all()):
        raise ValueError(
            f"{layer}: the base weight holds {int((~finite).sum())} NaN/Inf value(s) of {weight.numel()}; the "
            "Nyström init copies rows and columns of W, so the adapter would be NaN (or the SVD would fail). "
            "Load an undamaged base checkpoint, or use init_method='slora', which does not read W"
        )


def nystrom_factors(
    weight: torch.Tensor,
    r: int,
    *,
    index: IndexChoice = "first",
    core: CoreChoice = "sample",
    pinv_rtol: float = 1e-2,
    generator: torch.Generator | None = None,
) -> NystromFactors:
    """Nyström factors of a torch-layout weight (out × in), computed in float32.

    ``core`` picks N (paper §3):
    - ``sample``: N = A_W, the authors' simplification ("directly employing A_W instead of its
      pseudoinverse"); B·N·A is then not an approximation of W.
    - ``pinv``: N = A_W^+ (guarded), the Nyström approximation of eq. 5: exact on the sampled rows
      and columns.
    - ``optimal``: N = C^+ W R^+, the least-squares core for the same sampled C = W[:, J] and
      R = W[I, :] (the best approximation of W that these rows and columns allow; O(out·in·r)).
    """
    weight = weight.detach()
    out_features, in_features = weight.shape
    if not 0 < r <= min(out_features, in_features):
        raise ValueError(f"r={r} must be between 1 and min(out, in) = {min(out_features, in_features)}")
    rows, cols = select_indices(weight, r, index, generator)
    rows, cols = rows.to(weight.device), cols.to(weight.device)
    if index == "first":  # plain slices: no gather over the full matrix
        lora_A = weight[:r, :].float().clone()
        lora_B = weight[:, :r].float().clone()
        sampled_block = lora_A[:, :r]
    else:
        lora_A = weight.index_select(0, cols).float()
        lora_B = weight.index_select(1, rows).float()
        sampled_block = lora_A.index_select(1, rows)  # = W_t[J, I] = A_Wᵀ
    if core == "sample":
        lora_N = sampled_block.clone()
    elif core == "pinv":
        lora_N = guarded_pinv(sampled_block, pinv_rtol)
    elif core == "optimal":
        lora_N = guarded_pinv(lora_B, pinv_rtol) @ weight.float() @ guarded_pinv(lora_A, pinv_rtol)
    else:
        raise ValueError(f"nystrom_core={core!r} is not one of {', '.join(map(repr, CORE_CHOICES))}")
    return NystromFactors(lora_A, lora_N, lora_B, rows, cols)


def relative_error(weight: torch.Tensor, approximation: torch.Tensor) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F."""
    w = weight.float()
    return float(torch.linalg.matrix_norm(w - approximation.float()) / torch.linalg.matrix_norm(w))


def truncated_svd_error(weight: torch.Tensor, r: int) -> float:
    """Relative error of the best rank-r approximation (Eckart–Young), the reference for any factors."""
    singular_values = torch.linalg.svdvals(weight.float())
    return float(singular_values[r:].norm() / singular_values.norm())
