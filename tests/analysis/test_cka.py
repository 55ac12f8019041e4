"""Linear CKA against the n×n Gram-matrix HSIC definitions in float64, its invariances, and the heatmap."""

import pytest
import torch

from semalign.analysis.cka import (
    CkaConfig,
    best_matches,
    cka_matrix,
    even_rows,
    layer_contributions,
    linear_cka,
    plot_heatmaps,
)
from semalign.errors import SemalignError


def _features(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hsic_biased(k, m):
    n = k.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return torch.trace(k @ h @ m @ h)


def _hsic_unbiased(k, m):
    """Song et al. (2012), eq. 5, literally: zero diagonals, then the three terms."""
    n = k.shape[0]
    k, m = k.clone().fill_diagonal_(0), m.clone().fill_diagonal_(0)
    one = torch.ones(n, dtype=torch.float64)
    value = (
        torch.trace(k @ m)
        + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ k @ m @ one)
    )
    return value / (n * (n - 3))


def _cka_bruteforce(x, y, debiased=False):
    hsic = _hsic_unbiased if debiased else _hsic_biased
    if debiased:  # Kornblith's debiased CKA works on centered features
        x, y = x - x.mean(0), y - y.mean(0)
    k, m = x @ x.T, y @ y.T
    return float(hsic(k, m) / torch.sqrt(hsic(k, k) * hsic(m, m)))


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_the_gram_matrix_definition(debiased):
    x = _features(40, 7, 0) + 3.0  # an offset, so centering matters
    y = x[:, :5] @ _features(5, 9, 1) + 0.5 * _features(40, 9, 2)
    assert linear_cka(x.float(), y.float(), debiased) == pytest.approx(
        _cka_bruteforce(x.float().double(), y.float().double(), debiased), rel=1e-9
    )
    assert 0.2 < linear_cka(x, y, debiased) < 1.0


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_is_one_for_identical_inputs_and_invariant_to_rotation_and_scale(debiased):
    x = _features(200, 12, 3)
    y = torch.tanh(x @ _features(12, 16, 4))  # a non-trivial relation, so the value is not just 1
    rotation, _ = torch.linalg.qr(_features(16, 16, 5))
    base = linear_cka(x, y, debiased)
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    assert 0.3 < base < 0.99
    assert linear_cka(x, y @ rotation, debiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y, debiased) == pytest.approx(base, rel=1e-10)
    # Not invariant to an anisotropic rescaling: the test could tell a wrong normalisation apart.
    stretch = torch.ones(16, dtype=torch.float64)
    stretch[0] = 30.0
    assert abs(linear_cka(x, y * stretch, debiased) - base) > 1e-3


def test_linear_cka_is_near_zero_for_independent_features_and_debiasing_removes_the_bias():
    x, y = _features(4000, 10, 6), _features(4000, 10, 7)
    assert linear_cka(x, y) < 0.02
    assert abs(linear_cka(x, y, debiased=True)) < 0.005
    # With n close to d the biased estimator is far from 0 for independent data; the debiased one is not.
    x, y = _features(60, 50, 8), _features(60, 50, 9)
    assert linear_cka(x, y) > 0.3
    assert abs(linear_cka(x, y, debiased=True)) < 0.1


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_linear_cka_for_every_pair(debiased):
    base = _features(70, 6, 10)
    teacher = [
        base @ _features(6, d, 11 + i) + 0.3 * i * _features(70, d, 20 + i)
        for i, d in enumerate((8, 8, 8, 8))
    ]
    student = [(base @ _features(6, 5, 30 + i)).float() for i in range(3)]
    matrix = cka_matrix(teacher, student, debiased=debiased, block_rows=16)  # 70 rows: a ragged last block
    assert matrix.shape == (4, 3) and matrix.dtype == torch.float64
    expected = [[linear_cka(t, s, debiased) for s in student] for t in teacher]
    assert torch.allclose(matrix, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0)


def test_cka_matrix_rejects_mismatched_tokens():
    with pytest.raises(SemalignError, match="same tokens"):
        cka_matrix([_features(10, 3, 0)], [_features(9, 3, 1)])
    with pytest.raises(SemalignError, match="max_tokens"):
        CkaConfig(max_tokens=0)


def test_contributions_show_the_layer_structure_that_a_massive_dimension_hides_in_raw_states():
    # Layer ℓ writes c_ℓ; the student writes the same contributions rotated. Layer 1 also writes a massive
    # activation (1000 on dim 0 of 3 tokens) that the residual stream carries to every later layer.
    n, d, layers = 300, 16, 5
    contributions = [_features(n, d, 40 + ell) for ell in range(layers + 1)]
    contributions[1][:3, 0] += 1000.0
    rotation, _ = torch.linalg.qr(_features(d, d, 50))
    teacher = list(torch.stack(contributions).cumsum(0))
    student = [h @ rotation for h in teacher]

    got = layer_contributions(teacher)
    assert len(got) == layers + 1 and torch.equal(got[0], teacher[0])
    for ell in range(1, layers + 1):
        torch.testing.assert_close(got[ell], contributions[ell], rtol=0, atol=1e-12)

    raw = cka_matrix(teacher, student)
    assert raw[1:, 1:].min() > 0.99, "the massive dimension makes every raw pair look alike"
    deltas = cka_matrix(layer_contributions(teacher), layer_contributions(student))
    off_diagonal = ~torch.eye(layers + 1, dtype=torch.bool)
    torch.testing.assert_close(deltas.diagonal(), torch.ones(layers + 1, dtype=torch.float64))
    assert deltas[off_diagonal].max() < 0.1
    with pytest.raises(SemalignError, match=r"^layer_contributions needs at least the embeddings h_0$"):
        layer_contributions([])


def test_even_rows_and_best_matches():
    assert even_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert even_rows(11, 3).tolist() == [0, 5, 10]
    matrix = torch.tensor(
        [[0.9, 0.1, 0.1], [0.2, 0.8, 0.3], [0.1, 0.7, 0.2], [0.0, 0.2, 0.6], [0.0, 0.1, 0.5]],
        dtype=torch.float64,
    )
    summary = best_matches(matrix, depth=[2, 4])
    assert summary["best_teacher_layer"] == [1, 3]
    assert summary["best_cka"] == [0.8, 0.6]
    assert summary["offset_from_depth_map"] == [-1, -1]
    assert summary["mean_cka_at_depth_map"] == pytest.approx((0.7 + 0.5) / 2)


def test_plot_heatmaps_writes_a_png(tmp_path):
    matrices = {name: torch.rand(5, 3, dtype=torch.float64) for name in ("a", "b", "c")}
    plot_heatmaps(matrices, tmp_path / "cka.png", "title", depth=[2, 4])
    assert (tmp_path / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
