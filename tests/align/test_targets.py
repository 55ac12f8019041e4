"""Targets: the teacher's residual contribution at the paired depth, mapped by M, zero on padding."""

import torch

from cache_fixtures import NUM_LAYERS, build_cache, make_inputs
from semalign.align.alignment import decompose_recompose
from semalign.align.latent_maps import semantic_map
from semalign.align.pairing import build_pairing
from semalign.align.targets import target_arrays, target_name, teacher_quantity, write_targets
from semalign.store import StoreWriter, open_store
from semalign.teacher.cache import CacheConfig, residual_stream

D_STUDENT = 16


def test_targets_equal_the_mapped_interpolated_contribution(tmp_path):
    encoded = make_inputs(num_examples=5)
    build_cache(tmp_path / "cache.zarr", CacheConfig(dtype="float32", batch_size=2), encoded)
    cache = open_store(tmp_path / "cache.zarr")
    # 3 teacher layers -> 2 student layers: non-integer ratio, so k=1 interpolates layers 1 and 2
    pairing = build_pairing(NUM_LAYERS, 2, [0.2, 0.5, 0.3], mode="v1", num_critical=3, train_layers="all")
    pairs = [p for p in pairing.layers if p.trained]
    folded = torch.randn(D_STUDENT, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    n, t = encoded.input_ids.shape
    with StoreWriter(tmp_path / "targets.zarr", target_arrays(pairs, n, t, D_STUDENT, 2), "fp") as writer:
        assert (
            write_targets(cache, pairs, {p.student_layer: semantic_map(folded) for p in pairs}, True, writer)
            == 3
        )
        writer.finalize({})
    targets = open_store(tmp_path / "targets.zarr")

    h = {ell: state.double() for ell, state in residual_stream(cache, NUM_LAYERS, 0, n)}
    first = pairs[0]
    assert (first.interp.a, first.interp.b) == (1, 2) and 0 < first.interp.lam < 1
    lam = first.interp.lam
    expected = (1 - lam) * (h[1] - h[0]) + lam * (h[2] - h[1])
    mapped = decompose_recompose(expected.reshape(-1, 32), folded).reshape(n, t, D_STUDENT)
    got = targets.read(target_name(1)).double()
    torch.testing.assert_close(got, mapped, atol=1e-5, rtol=1e-4)
    padding = ~encoded.attention_mask.bool()
    assert not got[padding].any(), "padding positions must have zero targets"


def test_without_interpolation_the_paired_layer_is_used(tmp_path):
    encoded = make_inputs(num_examples=2)
    build_cache(tmp_path / "cache.zarr", CacheConfig(dtype="float32", batch_size=2), encoded)
    cache = open_store(tmp_path / "cache.zarr")
    pair = build_pairing(NUM_LAYERS, 2, [0.2, 0.5, 0.3], mode="v1").layers[0]
    got = teacher_quantity(cache, pair, use_interpolation=False, start=0, stop=2)
    ell = pair.teacher_layer
    h = dict(residual_stream(cache, NUM_LAYERS, 0, 2))
    torch.testing.assert_close(got, h[ell] - h[ell - 1], atol=1e-6, rtol=1e-5)
