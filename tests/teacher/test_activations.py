"""Residual capture equals the model's own hidden states (raw, not final-normed); top-k keeps all mass."""

import pytest
import torch

from semalign.errors import SemalignError
from semalign.teacher.activations import ResidualRecorder, teacher_forward, topk_with_rest
from semalign.testing import tiny_model


def test_recorder_returns_raw_residual_stream_for_every_layer():
    model = tiny_model("qwen2", num_layers=3)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with ResidualRecorder(model, range(4)) as rec:
        reference = model(ids, output_hidden_states=True).hidden_states
    for ell in range(3):
        torch.testing.assert_close(rec.states[ell], reference[ell], rtol=0, atol=0)
    # transformers' last hidden state is final-normed; the recorder keeps the raw h_L it came from
    torch.testing.assert_close(model.model.norm(rec.states[3]), reference[3])
    assert not torch.allclose(rec.states[3], reference[3])


def test_recorder_removes_its_hooks_and_rejects_bad_layers():
    model = tiny_model("llama", num_layers=2)
    with ResidualRecorder(model, [1]):
        pass
    assert not model.model.layers[0]._forward_hooks
    with pytest.raises(SemalignError, match=r"out of range.*0\.\.2"):
        ResidualRecorder(model, [3])


def test_topk_and_rest_account_for_all_probability_mass():
    logits = torch.randn(2, 5, 50, dtype=torch.float64) * 3
    top, ids, rest = topk_with_rest(logits, k=7)
    total = top.double().exp().sum(-1) + rest.double().exp()
    torch.testing.assert_close(total, torch.ones(2, 5, dtype=torch.float64), atol=1e-5, rtol=0)
    reference = torch.log_softmax(logits, -1).topk(7, -1)
    assert torch.equal(ids.long(), reference.indices)
    torch.testing.assert_close(top.double(), reference.values, atol=1e-5, rtol=0)
    assert ids.dtype == torch.int32


def test_teacher_forward_shapes():
    model = tiny_model("qwen2", num_layers=3, vocab_size=320)
    out = teacher_forward(
        model, torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long), [0, 2, 3], top_k=4
    )
    assert sorted(out.hidden) == [0, 2, 3] and out.hidden[2].shape == (1, 3, 48)
    assert out.topk_logprobs.shape == out.topk_ids.shape == (1, 3, 4) and out.rest_logmass.shape == (1, 3)


def test_residual_states_keep_real_tokens_in_example_order():
    from semalign.teacher.activations import residual_states

    model = tiny_model("qwen2", num_layers=2)
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [10, 11, 12, 13]])
    mask = (ids != 0).long()
    head_inputs = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_inputs.append(i[0].shape[1]))
    states = residual_states(model, ids, mask, [0, 2], batch_size=2)
    assert head_inputs == [1, 1]  # the head, whose logits nobody reads, runs on one position per batch
    assert states[2].shape == (9, 48)
    with ResidualRecorder(model, [2]) as rec, torch.no_grad():
        model(ids[1:2, :2])
    torch.testing.assert_close(states[2][3:5], rec.states[2][0])
