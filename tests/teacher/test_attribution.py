"""Layer attribution: float64 reference, a model whose task signal lives in one layer, padding, plots."""

import copy
import json

import pytest
import torch

from semalign.errors import SemalignError
from semalign.teacher.attribution import layer_scores, plot_layer_scores, scores_to_plot_rows
from semalign.testing import tiny_model

NUM_LAYERS = 4


def _model(seed=1):
    return tiny_model("qwen2", seed=seed, hidden_size=32, num_layers=NUM_LAYERS)


def _batch(num_examples=4, num_tokens=9, prompt=5, seed=0):
    """input_ids, attention_mask, labels: [examples, tokens]; the last tokens are the answer."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (num_examples, num_tokens), generator=gen)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return ids, torch.ones_like(ids), labels


def _only_layer_writes(model, layer):
    """Zero every other layer's output projections: those layers add exactly 0 to the residual stream."""
    with torch.no_grad():
        for ell, block in enumerate(model.model.layers, start=1):
            if ell != layer:
                block.self_attn.o_proj.weight.zero_()
                block.mlp.down_proj.weight.zero_()
    return model


def _reference_raw(model, ids, mask, labels, target):
    """Plain-autograd float64 Σ|∂objective/∂h_ℓ ⊙ act| per layer, mean over examples (no Captum)."""
    model = copy.deepcopy(model).double()
    states = {}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: states.__setitem__(0, o))]
    for ell, block in enumerate(model.model.layers, start=1):
        hooks.append(block.register_forward_hook(lambda m, i, o, ell=ell: states.__setitem__(ell, o)))
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, dim=-1)
    for handle in hooks:
        handle.remove()
    objective = 0.0
    for b in range(len(ids)):
        answer = [t for t in range(1, ids.shape[1]) if labels[b, t] != -100]
        objective = objective + sum(logp[b, t - 1, labels[b, t]] for t in answer) / len(answer)
    grads = torch.autograd.grad(objective, [states[ell] for ell in range(1, NUM_LAYERS + 1)])
    raw = []
    for ell, grad in enumerate(grads, start=1):
        act = states[ell] - states[ell - 1] if target == "contribution" else states[ell]
        raw.append(float((grad * act).abs()[mask.bool()].sum().detach()) / len(ids))
    return raw


@pytest.mark.parametrize("target", ["contribution", "residual"])
def test_matches_float64_autograd_reference(target):
    model = _model()
    ids, mask, labels = _batch()
    result = layer_scores(model, ids, mask, labels, batch_size=3, target=target)
    expected = _reference_raw(model, ids, mask, labels, target)
    assert result.raw == pytest.approx(expected, rel=1e-4)
    assert result.scores == pytest.approx([r / sum(expected) for r in expected], rel=1e-4)
    assert (len(result.scores), result.num_examples, result.target) == (NUM_LAYERS, 4, target)
    assert sum(result.scores) == pytest.approx(1.0, abs=1e-12) and min(result.scores) >= 0


@pytest.mark.parametrize("active", [1, 3, 4])
def test_contribution_finds_the_only_layer_that_writes(active):
    model = _only_layer_writes(_model(), active)
    result = layer_scores(model, *_batch(), batch_size=2)
    expected = [1.0 if ell == active else 0.0 for ell in range(1, NUM_LAYERS + 1)]
    assert result.scores == pytest.approx(expected, abs=1e-6)


def test_residual_target_is_a_step_at_the_only_layer_that_writes():
    # Residual states before layer 3 are all h_0 and after it all h_3, and so are their gradients:
    # the residual target cannot tell a layer that does nothing from its neighbour.
    scores = layer_scores(_only_layer_writes(_model(), 3), *_batch(), batch_size=4, target="residual").scores
    assert scores[0] == pytest.approx(scores[1], rel=1e-5) and scores[2] == pytest.approx(scores[3], rel=1e-5)
    assert abs(scores[1] - scores[2]) > 1e-3


def test_one_forward_pass_per_batch_and_batching_does_not_change_scores():
    model = _model()
    batch = _batch(num_examples=5)
    calls = []
    handle = model.model.embed_tokens.register_forward_hook(lambda *_: calls.append(1))
    whole = layer_scores(model, *batch, batch_size=5)
    split = layer_scores(model, *batch, batch_size=2)
    handle.remove()
    assert len(calls) == 1 + 3
    assert split.raw == pytest.approx(whole.raw, rel=1e-5)


def test_padding_changes_nothing():
    model = _model()
    short_ids, _, short_labels = _batch(num_examples=1, num_tokens=7, prompt=4, seed=1)
    long_ids, long_mask, long_labels = _batch(num_examples=1, num_tokens=11, prompt=6, seed=2)
    alone = [
        layer_scores(model, *b, batch_size=1).raw
        for b in ((short_ids, torch.ones_like(short_ids), short_labels), (long_ids, long_mask, long_labels))
    ]

    def padded(pad_token):
        ids = torch.full((2, 11), pad_token)
        mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
        ids[0, :7], mask[0, :7], labels[0, :7] = short_ids[0], 1, short_labels[0]
        ids[1], mask[1], labels[1] = long_ids[0], 1, long_labels[0]
        return layer_scores(model, ids, mask, labels, batch_size=2).raw

    expected = [(a + b) / 2 for a, b in zip(*alone)]
    assert padded(0) == pytest.approx(expected, rel=1e-4)
    assert padded(0) == pytest.approx(padded(123), rel=1e-6)


def test_bad_inputs_raise_project_error():
    model = _model()
    ids, mask, labels = _batch()
    no_answer = labels.clone()
    no_answer[2] = -100
    with pytest.raises(SemalignError, match=r"examples \[2\] have no supervised answer token"):
        layer_scores(model, ids, mask, no_answer, batch_size=2)
    with pytest.raises(SemalignError, match="target 'output'"):
        layer_scores(model, ids, mask, labels, batch_size=2, target="output")
    with pytest.raises(SemalignError, match="batch_size 0"):
        layer_scores(model, ids, mask, labels, batch_size=0)
    with pytest.raises(SemalignError, match=r"labels \(4, 8\)"):
        layer_scores(model, ids, mask, labels[:, 1:], batch_size=2)


def test_plot_rows_and_png(tmp_path):
    rows = scores_to_plot_rows([0.5, 0.25, 0.25])
    assert rows == [{"layer": 1, "score": 0.5}, {"layer": 2, "score": 0.25}, {"layer": 3, "score": 0.25}]
    json.dumps(rows)
    path = tmp_path / "plots" / "scores.png"
    plot_layer_scores([0.5, 0.25, 0.25], path, "teacher layer attribution")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
