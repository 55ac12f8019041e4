"""Teacher cache: values equal a plain forward pass; a SIGKILLed run resumes to the same bytes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cache_fixtures import NUM_LAYERS, WIDTH, build_cache, make_inputs
from semalign.errors import SemalignError
from semalign.store import open_store
from semalign.teacher.activations import ResidualRecorder
from semalign.teacher.cache import CacheConfig, kept_layers, state_name
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
        for ell in range(NUM_LAYERS + 1):
            cached = store.read_rows(state_name(ell), i, i + 1)[0]
            torch.testing.assert_close(cached[:n], rec.states[ell][0], atol=1e-5, rtol=1e-5)
            assert not cached[n:].any(), "padding positions must be stored as zeros"
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


def test_bfloat16_states_are_the_rounded_float32_states(tmp_path):
    encoded = make_inputs()
    build_cache(tmp_path / "f32.zarr", CacheConfig(dtype="float32", batch_size=4), encoded)
    build_cache(tmp_path / "bf16.zarr", CacheConfig(dtype="bfloat16", batch_size=4), encoded)
    f32, bf16 = open_store(tmp_path / "f32.zarr"), open_store(tmp_path / "bf16.zarr")
    h32, h16 = f32.read(state_name(2)), bf16.read(state_name(2))
    assert h16.dtype == torch.bfloat16
    assert torch.equal(h16, h32.to(torch.bfloat16))


def test_layer_restriction_and_config_errors(tmp_path):
    encoded = make_inputs(num_examples=2)
    build_cache(tmp_path / "c.zarr", CacheConfig(layers=[0, 3], batch_size=2), encoded)
    assert {state_name(0), state_name(3)} <= set(open_store(tmp_path / "c.zarr").arrays)
    assert state_name(1) not in open_store(tmp_path / "c.zarr").arrays
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
