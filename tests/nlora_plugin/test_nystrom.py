"""Nyström factors: index choices, cores, and the identities the paper's eq. 5 promises."""

import pytest
import torch

from nlora_plugin.nystrom import (
    deim_indices,
    nystrom_factors,
    relative_error,
    select_indices,
    truncated_svd_error,
)


def low_rank_weight(out_features=40, in_features=30, rank=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, rank, generator=g) @ torch.randn(rank, in_features, generator=g)


def test_authors_default_is_first_rows_columns_and_sampled_block():
    w = torch.randn(20, 12)
    f = nystrom_factors(w, 4)
    assert torch.equal(f.lora_A, w[:4, :])
    assert torch.equal(f.lora_B, w[:, :4])
    assert torch.equal(f.lora_N, w[:4, :4])


@pytest.mark.parametrize("index", ["first", "random", "pivoted"])
def test_pinv_core_is_exact_on_a_matrix_of_rank_r(index):
    # Nyström (eq. 5) reproduces W exactly when rank(W) = r and the sampled block is invertible.
    w = low_rank_weight(rank=6)
    f = nystrom_factors(w, 6, index=index, core="pinv", pinv_rtol=1e-7, generator=torch.Generator().manual_seed(0))
    assert relative_error(w, f.product()) < 1e-4


def test_pinv_core_reproduces_sampled_rows_and_columns():
    w = torch.randn(30, 25, dtype=torch.float64).float()
    f = nystrom_factors(w, 5, index="random", core="pinv", pinv_rtol=0.0, generator=torch.Generator().manual_seed(3))
    product = f.product()
    assert torch.allclose(product[f.col_index, :], w[f.col_index, :], atol=1e-3)
    assert torch.allclose(product[:, f.row_index], w[:, f.row_index], atol=1e-3)


def test_optimal_core_is_never_worse_than_pinv_and_bounded_by_svd():
    w = torch.randn(64, 48) + 3 * low_rank_weight(64, 48, rank=4, seed=2)
    for index in ("first", "random", "pivoted"):
        gen = lambda: torch.Generator().manual_seed(5)
        pinv = relative_error(w, nystrom_factors(w, 8, index=index, core="pinv", generator=gen()).product())
        optimal = relative_error(w, nystrom_factors(w, 8, index=index, core="optimal", generator=gen()).product())
        assert optimal <= pinv + 1e-6
        assert optimal >= truncated_svd_error(w, 8) - 1e-6


def test_pivoted_indices_beat_first_indices_on_a_structured_weight():
    # Energy concentrated away from the first rows/columns: "first" misses it, pivoting finds it.
    w = torch.randn(50, 40) * 0.01
    w[30:36, 20:26] += torch.randn(6, 6) * 5
    first = relative_error(w, nystrom_factors(w, 6, index="first", core="optimal").product())
    pivoted = relative_error(
        w, nystrom_factors(w, 6, index="pivoted", core="optimal", generator=torch.Generator().manual_seed(0)).product()
    )
    assert pivoted < 0.5 * first


def test_random_indices_depend_only_on_the_seed():
    w = torch.randn(30, 20)
    a = select_indices(w, 5, "random", torch.Generator().manual_seed(7))
    b = select_indices(w, 5, "random", torch.Generator().manual_seed(7))
    c = select_indices(w, 5, "random", torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert len(set(a[0].tolist())) == 5 and a[0].max() < 20 and a[1].max() < 30


def test_deim_picks_distinct_indices():
    vectors = torch.linalg.qr(torch.randn(40, 7)).Q
    chosen = deim_indices(vectors)
    assert len(set(chosen.tolist())) == 7


def test_bf16_weight_is_factored_in_float32():
    w = torch.randn(16, 12).to(torch.bfloat16)
    f = nystrom_factors(w, 4, core="pinv")
    assert f.lora_N.dtype == torch.float32 and f.lora_A.dtype == torch.float32


def test_rank_larger_than_weight_is_rejected():
    with pytest.raises(ValueError, match="r=13"):
        nystrom_factors(torch.randn(20, 12), 13)
