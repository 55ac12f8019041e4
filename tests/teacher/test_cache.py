"""Teacher cache: values equal a plain forward pass; a SIGKILLed run resumes to the same bytes."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cache_fixtures import NUM_LAYERS, WIDTH, build_cache, make_inputs
from semalign.align.alignment import row_cosine
from semalign.errors import SemalignError
from semalign.store import open_store
from semalign.teacher.activations import ResidualRecorder, residual_states
from semalign.teacher.cache import CacheConfig, kept_layers, read_contribution, residual_stream, state_name
from semalign.testing import tiny_model


def test_cached_states_equal_an_unpadded_forward(tmp_path):
    encoded = make_inputs()
    config = CacheConfig(dtype="float32", batch_size=3, top_k=5)
    model = tiny_model("qwen2", seed=1, num_layers=NUM_LAYERS, hidden_size=WIDTH)
    build_cache(tmp_path / "c.zarr", config, encoded, model)
    store = open_store(tmp_path / "c.zarr")
    for i in range(len(encoded.input_ids)):
        n = int(encoded.attention_mask[i].sum())
        with ResidualRecorder(model, range(NUM_LAYERS + 1)) as rec, torch.no_grad():
            model(encoded.input_ids[i : i + 1, :n])
        rebuilt = dict(residual_stream(store, NUM_LAYERS, i, i + 1))
        for ell in range(NUM_LAYERS + 1):
            cached = store.read_rows(state_name(ell), i, i + 1)[0]
            delta = rec.states[ell][0] - (rec.states[ell - 1][0] if ell else 0.0)
            torch.testing.assert_close(cached[:n], delta, atol=1e-5, rtol=1e-5)
            assert not cached[n:].any(), "padding positions must be stored as zeros"
            torch.testing.assert_close(rebuilt[ell][0, :n], rec.states[ell][0], atol=1e-5, rtol=1e-5)
    top, rest = store.read("topk_logprobs"), store.read("rest_logmass")
    real = encoded.attention_mask.bool()
    total = top.double().exp().sum(-1) + rest.double().exp()
    torch.testing.assert_close(
        total[real], torch.ones(int(real.sum()), dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_a_store_without_layers_holds_the_same_next_token_arrays_only(tmp_path):
    encoded = make_inputs()
    config = CacheConfig(dtype="float32", batch_size=3, top_k=5)
    build_cache(tmp_path / "full.zarr", config, encoded)
    build_cache(tmp_path / "topk.zarr", config, encoded, states=False)
    full, topk = open_store(tmp_path / "full.zarr"), open_store(tmp_path / "topk.zarr")
    assert set(topk.arrays) == {"topk_logprobs", "topk_ids", "rest_logmass"}
    for name in topk.arrays:
        assert torch.equal(topk.read(name), full.read(name)), name


def test_bfloat16_contributions_are_the_rounded_float32_contributions(tmp_path):
    encoded = make_inputs()
    build_cache(tmp_path / "f32.zarr", CacheConfig(dtype="float32", batch_size=4), encoded)
    build_cache(tmp_path / "bf16.zarr", CacheConfig(dtype="bfloat16", batch_size=4), encoded)
    f32, bf16 = open_store(tmp_path / "f32.zarr"), open_store(tmp_path / "bf16.zarr")
    for ell in (0, 2):
        d32, d16 = f32.read(state_name(ell)), bf16.read(state_name(ell))
        assert d16.dtype == torch.bfloat16
        assert torch.equal(d16, d32.to(torch.bfloat16))


def test_contributions_keep_their_precision_beside_a_massive_residual(tmp_path):
    # One massive embedding dimension: ‖h‖/‖Δh‖ ≈ 70-90, as on a real LM's massive-activation tokens.
    model = tiny_model("qwen2", seed=1, num_layers=NUM_LAYERS, hidden_size=WIDTH)
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] += 5.0
    encoded = make_inputs()
    build_cache(tmp_path / "c.zarr", CacheConfig(dtype="bfloat16", batch_size=4), encoded, model)
    store, real = open_store(tmp_path / "c.zarr"), encoded.attention_mask.bool()
    h = residual_states(model, encoded.input_ids, encoded.attention_mask, range(NUM_LAYERS + 1))
    rebuilt = dict(residual_stream(store, NUM_LAYERS, 0, len(real)))
    for ell in range(1, NUM_LAYERS + 1):
        exact = h[ell].double() - h[ell - 1].double()
        assert (h[ell].norm(dim=-1) / exact.norm(dim=-1)).min() > 50
        stored = read_contribution(store, ell, 0, len(real))[real]
        assert row_cosine(stored, exact).min() > 0.99999
        from_rounded_h = h[ell].bfloat16().double() - h[ell - 1].bfloat16().double()
        assert row_cosine(from_rounded_h, exact).min() < 0.99, "the probe must defeat Δh formed from bf16 h"
        assert row_cosine(rebuilt[ell][real], h[ell]).min() > 0.99999


def test_layer_restriction_and_config_errors(tmp_path):
    encoded = make_inputs(num_examples=2)
    build_cache(tmp_path / "c.zarr", CacheConfig(layers=[0, 3], batch_size=2), encoded)
    build_cache(tmp_path / "all.zarr", CacheConfig(batch_size=2), encoded)
    some, full = open_store(tmp_path / "c.zarr"), open_store(tmp_path / "all.zarr")
    assert {"h_00", "dh_03"} <= set(some.arrays) and "dh_01" not in some.arrays
    # Δh_3 needs h_2, which is recorded though not kept
    assert torch.equal(read_contribution(some, 3, 0, 2), read_contribution(full, 3, 0, 2))
    with pytest.raises(SemalignError, match=r"has no dh_01 \(teacher layer 1\); add 1 to cache.layers"):
        list(residual_stream(some, 3, 0, 2))
    with pytest.raises(SemalignError, match="layer 0 has no residual contribution"):
        read_contribution(full, 0, 0, 2)
    with pytest.raises(SemalignError, match=r"out of range.*0\.\.3"):
        kept_layers(CacheConfig(layers=[4]), NUM_LAYERS)
    with pytest.raises(SemalignError, match="cache.dtype"):
        CacheConfig(dtype="int8")


WORKER = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
import semalign.teacher.cache as cache
from cache_fixtures import build_cache, make_inputs
forward = cache.teacher_forward
def slow_forward(*args, **kwargs):
    time.sleep(0.4)
    return forward(*args, **kwargs)
cache.teacher_forward = slow_forward
build_cache(Path({path!r}), cache.CacheConfig(batch_size=1, top_k=4), make_inputs(num_examples=12))
"""


def test_sigkill_then_resume_gives_identical_bytes(tmp_path):
    encoded = make_inputs(num_examples=12)
    config = CacheConfig(batch_size=1, top_k=4)
    killed = tmp_path / "killed.zarr"
    script = WORKER.format(tests=str(Path(__file__).parents[1]), path=str(killed))
    proc = subprocess.Popen([sys.executable, "-c", script])
    journal = killed / "progress.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3 * 7 + 2:  # 3 chunks + part of one
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the worker finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    with pytest.raises(SemalignError, match="incomplete"):
        open_store(killed)
    computed = build_cache(killed, config, encoded)
    assert 0 < computed < 12, f"the resumed run should redo only unfinished chunks, redid {computed}"

    build_cache(tmp_path / "clean.zarr", config, encoded)
    resumed, clean = open_store(killed), open_store(tmp_path / "clean.zarr")
    for name in clean.arrays:
        a, b = resumed.read(name), clean.read(name)
        assert a.dtype == b.dtype and torch.equal(
            a.view(torch.uint8) if a.is_floating_point() else a,
            b.view(torch.uint8) if b.is_floating_point() else b,
        ), name
    assert build_cache(killed, config, encoded) == 0, "a finished store must not be recomputed"


def test_a_teacher_producing_nan_stops_the_cache_naming_the_chunk(tmp_path):
    model = tiny_model("qwen2", seed=1, num_layers=NUM_LAYERS, hidden_size=WIDTH)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")  # layer 2: Δh_02 on is NaN
    config = CacheConfig(dtype="bfloat16", batch_size=2, writers=1)
    with pytest.raises(
        SemalignError, match=r"chunk 0 of 'dh_02' \(rows 0\.\.1\) holds \d+ NaN/inf values and is not "
    ):
        build_cache(tmp_path / "cache.zarr", config, make_inputs(num_examples=4), model)
    with pytest.raises(SemalignError, match="incomplete"):
        open_store(tmp_path / "cache.zarr")


def test_forward_precision_is_checked_and_part_of_the_store_identity():
    with pytest.raises(SemalignError) as error:
        CacheConfig(forward_dtype="float16")
    assert str(error.value) == "cache.forward_dtype is 'float16'; use one of ['float32', 'bfloat16']"
    # The store's fingerprint hashes asdict(config): a bfloat16 forward never resumes a float32 store.
    assert asdict(CacheConfig()) != asdict(CacheConfig(forward_dtype="bfloat16"))
