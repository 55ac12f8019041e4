"""Targets: the teacher's residual contribution at the paired depth, mapped by M, zero on padding."""

import numpy as np
import pytest
import torch
import zarr

from cache_fixtures import NUM_LAYERS, build_cache, make_inputs
from semalign.align.alignment import decompose_recompose
from semalign.align.latent_maps import random_map, semantic_map
from semalign.align.pairing import build_pairing
from semalign.align.targets import TargetSpec, target_arrays, target_name, teacher_quantity, write_targets
from semalign.errors import SemalignError
from semalign.store import StoreWriter, open_store, to_storage
from semalign.teacher.cache import CacheConfig, residual_stream, state_name

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
    specs = [TargetSpec("v1", p, semantic_map(folded), True) for p in pairs]
    with StoreWriter(tmp_path / "targets.zarr", target_arrays(specs, n, t, D_STUDENT, 2), "fp") as writer:
        assert write_targets(cache, specs, writer) == 3
        writer.finalize({})
    targets = open_store(tmp_path / "targets.zarr")

    h = {ell: state.double() for ell, state in residual_stream(cache, NUM_LAYERS, 0, n)}
    first = pairs[0]
    assert (first.interp.a, first.interp.b) == (1, 2) and 0 < first.interp.lam < 1
    lam = first.interp.lam
    expected = (1 - lam) * (h[1] - h[0]) + lam * (h[2] - h[1])
    mapped = decompose_recompose(expected.reshape(-1, 32), folded).reshape(n, t, D_STUDENT)
    got = targets.read(target_name(1, "v1")).double()
    torch.testing.assert_close(got, mapped, atol=1e-5, rtol=1e-4)
    padding = ~encoded.attention_mask.bool()
    assert not got[padding].any(), "padding positions must have zero targets"


def test_every_map_writes_its_own_arrays_into_one_store(tmp_path):
    encoded = make_inputs(num_examples=3)
    build_cache(tmp_path / "cache.zarr", CacheConfig(dtype="float32", batch_size=2), encoded)
    cache = open_store(tmp_path / "cache.zarr")
    pair = build_pairing(
        NUM_LAYERS, 2, [0.2, 0.5, 0.3], mode="v1", num_critical=3, train_layers="all"
    ).layers[1]
    folded = torch.randn(D_STUDENT, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    maps = {"semantic": semantic_map(folded), "random": random_map(D_STUDENT, 32, seed=1)}
    specs = [TargetSpec("v1", pair, m, False, name) for name, m in maps.items()]
    n, t = encoded.input_ids.shape
    with StoreWriter(tmp_path / "targets.zarr", target_arrays(specs, n, t, D_STUDENT, 2), "fp") as writer:
        write_targets(cache, specs, writer)
        writer.finalize({"maps": list(maps)})
    targets = open_store(tmp_path / "targets.zarr")
    assert set(targets.arrays) == {"semantic_v1_target_02", "random_v1_target_02"}
    assert target_name(2, "v1") == "semantic_v1_target_02"  # v1 and v2 train on semantic by default
    quantity = teacher_quantity(cache, pair, False, 0, n).reshape(-1, 32)
    for name, latent_map in maps.items():
        expected = latent_map(quantity).reshape(n, t, D_STUDENT)
        torch.testing.assert_close(targets.read(target_name(2, "v1", name)), expected)
    assert not torch.allclose(targets.read("semantic_v1_target_02"), targets.read("random_v1_target_02"))


def test_without_interpolation_the_paired_layer_is_used(tmp_path):
    encoded = make_inputs(num_examples=2)
    build_cache(tmp_path / "cache.zarr", CacheConfig(dtype="float32", batch_size=2), encoded)
    cache = open_store(tmp_path / "cache.zarr")
    pair = build_pairing(NUM_LAYERS, 2, [0.2, 0.5, 0.3], mode="v1").layers[0]
    got = teacher_quantity(cache, pair, use_interpolation=False, start=0, stop=2)
    ell = pair.teacher_layer
    h = dict(residual_stream(cache, NUM_LAYERS, 0, 2))
    torch.testing.assert_close(got, h[ell] - h[ell - 1], atol=1e-6, rtol=1e-5)


def _poison(path, name: str, example: int) -> None:
    """Write a NaN into example `example` of array `name` behind the store's back (a bit flip, a bad disk)."""
    array = zarr.open_group(path, mode="r+")[name]
    value = torch.tensor([float("nan")], dtype=torch.bfloat16 if array.dtype == np.uint16 else torch.float32)
    array[example, 0, 0] = to_storage(value)[0]


def _advice(command: str) -> str:
    return f"; rebuild it with `{command}` (it recomputes the bad chunks)"


def test_nan_in_the_cache_is_named_when_align_reads_it_and_the_advised_rerun_repairs_it(tmp_path):
    encoded, config, path = make_inputs(num_examples=5), CacheConfig(batch_size=2), tmp_path / "cache.zarr"
    build_cache(path, config, encoded, rebuild="dvc repro -f cache@mmlu")
    pair = build_pairing(NUM_LAYERS, 2, [0.2, 0.5, 0.3], mode="v1").layers[0]
    clean = teacher_quantity(open_store(path), pair, False, 0, 5)
    _poison(path, state_name(pair.teacher_layer), example=2)  # chunk 1 (batch_size 2)
    with pytest.raises(SemalignError) as err:
        teacher_quantity(open_store(path), pair, False, 0, 5)
    message = str(err.value)
    assert message.startswith(
        f"store {path}: chunk 1 of array '{state_name(pair.teacher_layer)}' is damaged ("
    )
    assert message.endswith(_advice("dvc repro -f cache@mmlu"))
    assert (
        build_cache(path, config, encoded, rebuild="dvc repro -f cache@mmlu") == 1
    )  # what that command runs
    assert torch.equal(teacher_quantity(open_store(path), pair, False, 0, 5), clean)


def test_nan_in_targets_is_named_when_training_reads_it_and_the_advised_rerun_repairs_it(tmp_path):
    encoded = make_inputs(num_examples=5)
    build_cache(tmp_path / "cache.zarr", CacheConfig(dtype="float32", batch_size=2), encoded)
    cache = open_store(tmp_path / "cache.zarr")
    pair = build_pairing(NUM_LAYERS, 2, [0.2, 0.5, 0.3], mode="v1").layers[0]
    folded = torch.randn(D_STUDENT, 32, dtype=torch.float64)
    specs = [TargetSpec("v1", pair, semantic_map(folded), False)]
    arrays, path = (
        target_arrays(specs, 5, encoded.input_ids.shape[1], D_STUDENT, 2),
        tmp_path / "targets.zarr",
    )

    def align() -> int:
        with StoreWriter(path, arrays, "fp", rebuild="dvc repro -f align@mmlu") as writer:
            computed = write_targets(cache, specs, writer)
            writer.finalize({})
        return computed

    assert align() == 3
    name = specs[0].name
    clean = open_store(path).read(name)
    _poison(path, name, example=4)  # chunk 2, the short last one
    with pytest.raises(SemalignError) as err:
        open_store(path).rows(name)[torch.tensor([4, 0])]  # how train reads its micro batches
    assert str(err.value).startswith(f"store {path}: chunk 2 of array '{name}' is damaged (")
    assert str(err.value).endswith(_advice("dvc repro -f align@mmlu"))
    assert align() == 1
    assert torch.equal(open_store(path).read(name), clean)
