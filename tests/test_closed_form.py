"""The shared closed-form solve, checked in float64 against independent computations."""

import numpy as np
import pytest
import torch

from erasure.closed_form import GramAccumulator, MappingTerm, solve_projections


def _problem(seed=0, dim=6, n_erase=4, n_keep=9):
    g = torch.Generator().manual_seed(seed)
    anchors = {"a.to_k.weight": torch.randn(5, dim, generator=g), "b.to_v.weight": torch.randn(7, dim, generator=g)}
    keys, sources = torch.randn(n_erase, dim, generator=g), torch.randn(n_erase, dim, generator=g)
    kept = torch.randn(n_keep, dim, generator=g)
    return anchors, keys, sources, kept


def test_solution_matches_numpy_normal_equations():
    anchors, keys, sources, kept = _problem()
    lam, s_e, s_p = 0.5, 1.0, 0.3
    erase, keep = GramAccumulator(6), GramAccumulator(6)
    erase.add(keys, sources)
    keep.add(kept)
    new = solve_projections(anchors, lam, [MappingTerm(anchors, erase, s_e), MappingTerm(anchors, keep, s_p)])
    for name, w0 in anchors.items():
        w0, k, src, p = (x.double().numpy() for x in (w0, keys, sources, kept))
        lhs = lam * np.eye(6) + s_e * k.T @ k + s_p * p.T @ p
        rhs = lam * w0 + s_e * (w0 @ src.T) @ k + s_p * w0 @ p.T @ p
        expected = rhs @ np.linalg.inv(lhs)
        np.testing.assert_allclose(new[name].double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_solution_is_a_minimum_by_autograd():
    anchors, keys, sources, kept = _problem(seed=1)
    anchors = {k: v.double() for k, v in anchors.items()}
    erase, keep = GramAccumulator(6), GramAccumulator(6)
    erase.add(keys, sources)
    keep.add(kept)
    new = solve_projections(anchors, 0.5, [MappingTerm(anchors, erase, 1.0), MappingTerm(anchors, keep, 1.0)])
    for name, w0 in anchors.items():
        w = new[name].clone().requires_grad_(True)
        loss = (
            0.5 * (w - w0).pow(2).sum()
            + (keys.double() @ w.T - sources.double() @ w0.T).pow(2).sum()
            + (kept.double() @ w.T - kept.double() @ w0.T).pow(2).sum()
        )
        loss.backward()
        assert w.grad.abs().max() < 1e-9


def test_streaming_equals_one_batch():
    _, keys, sources, _ = _problem(seed=2, n_erase=50)
    whole, streamed = GramAccumulator(6), GramAccumulator(6)
    whole.add(keys, sources)
    for start in range(0, 50, 7):
        streamed.add(keys[start : start + 7], sources[start : start + 7])
    assert torch.allclose(whole.keys, streamed.keys) and torch.allclose(whole.cross, streamed.cross)
    assert streamed.count == 50


def test_singular_system_without_regulariser_gives_least_squares_solution():
    anchors, keys, sources, _ = _problem(seed=3, n_erase=3)  # rank 3 < dim 6, lam 0
    grams = GramAccumulator(6)
    grams.add(keys, sources)
    new = solve_projections(anchors, 0.0, [MappingTerm(anchors, grams, 1.0)])
    for name, w0 in anchors.items():
        # The keys land exactly on their targets, and the solution has minimum norm.
        assert torch.allclose(new[name].double() @ keys.double().T, w0.double() @ sources.double().T, atol=1e-8)
        expected = (w0.double() @ sources.double().T) @ torch.linalg.pinv(keys.double().T)
        assert torch.allclose(new[name].double(), expected, atol=1e-8)


def test_outputs_keep_dtype_and_shape():
    anchors, keys, sources, _ = _problem()
    anchors = {k: v.half() for k, v in anchors.items()}
    grams = GramAccumulator(6)
    grams.add(keys, sources)
    new = solve_projections(anchors, 0.5, [MappingTerm(anchors, grams, 1.0)])
    assert all(new[k].dtype == torch.float16 and new[k].shape == anchors[k].shape for k in anchors)


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_weighted_batches_scale_the_grams(weight):
    _, keys, _, _ = _problem()
    plain, weighted = GramAccumulator(6), GramAccumulator(6)
    plain.add(keys)
    weighted.add(keys, weight=weight)
    assert torch.allclose(weighted.keys, weight * plain.keys)
