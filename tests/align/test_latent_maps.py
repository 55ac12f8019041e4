"""Latent maps: the semantic map is eq. 1–2 for every bases variant; ridge and Procrustes recover planted
maps;
maps are measured only on examples they were not fitted on."""

import pytest
import torch

from semalign.align.alignment import AlignConfig, decompose_recompose_naive, folded_map
from semalign.align.fidelity import compare_maps, fit_examples
from semalign.align.latent_maps import fit_map, fit_procrustes, fit_ridge, random_map, semantic_map
from semalign.errors import SemalignError
from semalign.store import open_store
from semalign.teacher.bases import write_bases
from semalign.testing import tiny_model


def test_semantic_map_equals_decompose_recompose_for_every_bases_variant(tmp_path):
    teacher = tiny_model("qwen2", seed=1, vocab_size=300, hidden_size=48, num_layers=2)
    student = tiny_model("qwen2", seed=2, vocab_size=300, hidden_size=32, num_layers=2)
    for role, model in (("teacher", teacher), ("student", student)):
        write_bases(model, tmp_path / f"{role}.zarr", model_id=role, chunk_rows=128)
    stores = {role: open_store(tmp_path / f"{role}.zarr") for role in ("teacher", "student")}
    h = torch.randn(20, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    for variant in ("head", "head_normed", "input"):
        s_t, s_s = (stores[role].read(variant).double() for role in ("teacher", "student"))
        folded = folded_map(
            lambda a, b, v=variant: stores["student"].read_rows(v, a, b),
            lambda a, b, v=variant: stores["teacher"].read_rows(v, a, b),
            300,
            chunk_rows=64,
        )
        naive = decompose_recompose_naive(h, s_t, s_s)
        got = semantic_map(folded)(h).double()
        assert ((got - naive).norm() / naive.norm()).item() < 1e-5, variant


def test_ridge_recovers_a_planted_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64)
    true_map = torch.randn(8, 12, generator=g, dtype=torch.float64)
    y = x @ true_map.T
    fitted = fit_ridge(x, y, strength=0.0)
    torch.testing.assert_close(fitted.matrix, true_map)
    assert not fitted.unit_input
    # a ridge penalty shrinks the map but keeps the direction of its outputs close
    shrunk = fit_ridge(x, y, strength=0.1).matrix
    assert shrunk.norm() < true_map.norm()
    assert torch.nn.functional.cosine_similarity(x @ shrunk.T, y).min() > 0.9


def test_ridge_refuses_a_singular_least_squares_and_negative_strength():
    x = torch.ones(5, 4, dtype=torch.float64)
    with pytest.raises(SemalignError, match="align.ridge above 0"):
        fit_ridge(x, torch.randn(5, 2, dtype=torch.float64), strength=0.0)
    with pytest.raises(SemalignError, match="negative"):
        fit_ridge(torch.randn(5, 4), torch.randn(5, 2), strength=-1.0)
    with pytest.raises(SemalignError, match="same tokens"):
        fit_ridge(torch.randn(5, 4), torch.randn(6, 2), strength=0.1)


def test_procrustes_recovers_a_planted_scaled_rotation_after_the_fixed_projection():
    g = torch.Generator().manual_seed(1)
    d_teacher, d_student = 10, 6
    # teacher states live in a d_student-dimensional subspace (so the PCA projection keeps all of them)
    basis, _ = torch.linalg.qr(torch.randn(d_teacher, d_student, generator=g, dtype=torch.float64))
    x = torch.randn(300, d_student, generator=g, dtype=torch.float64) @ basis.T
    rotation, _ = torch.linalg.qr(torch.randn(d_student, d_student, generator=g, dtype=torch.float64))
    y = 2.5 * (x @ basis) @ rotation
    fitted = fit_procrustes(x, y)
    assert fitted.matrix.shape == (d_student, d_teacher)
    torch.testing.assert_close(fitted(x).double(), y, atol=1e-4, rtol=1e-5)
    singular_values = torch.linalg.svdvals(fitted.matrix)
    torch.testing.assert_close(singular_values, torch.full((d_student,), 2.5, dtype=torch.float64))
    with pytest.raises(SemalignError, match="at least as wide"):
        fit_procrustes(torch.randn(20, 4), torch.randn(20, 6))


def test_fit_map_names_and_random_control():
    x, y, folded = torch.randn(30, 6), torch.randn(30, 4), torch.randn(4, 6, dtype=torch.float64)
    assert fit_map("semantic", x, y, folded, 0.1).matrix is not None
    with pytest.raises(SemalignError, match="unknown"):
        fit_map("affine", x, y, folded, 0.1)
    control = random_map(4, 6, seed=3)
    assert control.matrix.shape == (4, 6) and torch.equal(control.matrix, random_map(4, 6, seed=3).matrix)
    assert not control(torch.zeros(2, 6)).any()


def test_compare_maps_fits_on_the_first_examples_and_measures_on_the_rest():
    g = torch.Generator().manual_seed(2)
    n, t, d_t, d_s = 6, 40, 12, 8
    teacher = torch.randn(n, t, d_t, generator=g)
    true_map = torch.randn(d_s, d_t, generator=g)
    student = teacher @ true_map.T
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[:, 30:] = False
    fitted = 3
    maps, held_out = compare_maps(
        teacher, student, mask, fitted, torch.randn(d_s, d_t, dtype=torch.float64), ridge=1e-6
    )
    assert set(held_out) == {"semantic", "ridge", "procrustes", "random"}
    assert held_out["ridge"]["cosine"] > 0.999 and held_out["ridge"]["relation"] > 0.999
    assert abs(held_out["random"]["cosine"]) < 0.2
    # the held-out examples never reach the fit: scrambling them leaves the maps unchanged...
    scrambled = student.clone()
    scrambled[fitted:] = torch.randn(n - fitted, t, d_s, generator=g)
    maps_again, held_again = compare_maps(
        teacher, scrambled, mask, fitted, torch.randn(d_s, d_t, dtype=torch.float64), ridge=1e-6
    )
    torch.testing.assert_close(maps_again["ridge"].matrix, maps["ridge"].matrix)
    # ...but the measurement, taken on them, falls
    assert held_again["ridge"]["cosine"] < 0.3


def test_fit_examples_and_config_checks():
    assert fit_examples(32, 0.5) == 16 and fit_examples(2, 0.9) == 1 and fit_examples(3, 0.01) == 1
    with pytest.raises(SemalignError, match="at least 2"):
        fit_examples(1, 0.5)
    with pytest.raises(SemalignError, match="fit_fraction"):
        AlignConfig(fit_fraction=1.0)
    with pytest.raises(SemalignError, match="align.maps"):
        AlignConfig(maps=("affine",))
    assert AlignConfig(maps=["random", "semantic"]).maps == ("random", "semantic")
    assert AlignConfig().maps == ("semantic",)
    with pytest.raises(SemalignError, match="control_counts"):
        AlignConfig(control_counts=[0, 10])
