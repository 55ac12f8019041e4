"""Objectives against hand-computed values, and the invariances the method relies on."""

import itertools
import math

import pytest
import torch

from semalign.align.alignment import decompose_recompose
from semalign.student.objectives import (
    cross_entropy_loss,
    kd_loss,
    layer_cosine_loss,
    output_cosine_loss,
    relation_geometry_loss,
    topk_kl_loss,
)
from semalign.teacher.bases import align_vocabularies


def test_layer_cosine_by_hand_and_scale_invariance():
    h = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # cos = 0 and 1 on the two masked-in positions: 1 − 0.5
    assert layer_cosine_loss(h, target, mask).item() == pytest.approx(0.5)
    assert layer_cosine_loss(h * 7, target * 0.1, mask).item() == pytest.approx(0.5)


def test_output_cosine_by_hand():
    logits = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[-100, 1, 2]])  # position 0 predicts label 1, position 1 predicts label 2
    # cos(z0, e1) = 4/5, cos(z1, e2) = 1
    assert output_cosine_loss(logits, labels).item() == pytest.approx(1 - (0.8 + 1.0) / 2)


def test_cross_entropy_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1]])
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(-math.log(0.75))


def random_orthogonal(d, seed):
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q.float()


def test_relation_geometry_invariances_and_sensitivity():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 6, 8, generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    assert relation_geometry_loss(h, h, mask).item() == pytest.approx(0.0, abs=1e-10)
    rotated = h @ random_orthogonal(8, 1)
    scaled = h * 3.5
    per_token = h * torch.rand(2, 6, 1, generator=g) * 10  # each token its own scale
    for other in (rotated, scaled, per_token):
        assert relation_geometry_loss(h, other, mask).item() == pytest.approx(0.0, abs=1e-5)
    # a target of another width with the same geometry: embed h in 12 dims
    wider = torch.cat([h, torch.zeros(2, 6, 4)], dim=-1) @ random_orthogonal(12, 2)
    assert relation_geometry_loss(h, wider, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert relation_geometry_loss(h, torch.randn(2, 6, 8, generator=g), mask).item() > 0.1
    # masked-out tokens do not count
    changed = h.clone()
    changed[1, 4:] = 100.0
    assert relation_geometry_loss(changed, h, mask).item() == pytest.approx(0.0, abs=1e-5)


def test_relation_geometry_by_hand():
    # two tokens along the axes: unit rows (1,0), (0,1), centered at (½,½) to ±(½,−½), so R = [[1,−1],[−1,1]]
    h = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    target = torch.tensor([[[2.0, 0.0], [0.0, 0.5]]])
    assert relation_geometry_loss(h, target, torch.ones(1, 2)).item() == pytest.approx(0.0, abs=1e-7)
    same_direction = torch.tensor([[[0.0, 5.0], [0.0, 1.0]]])  # equal unit rows centre to zero: R = 0
    # every entry differs by 1 in magnitude: mean of (±1 − 0)² over 4 pairs = 1
    assert relation_geometry_loss(h, same_direction, torch.ones(1, 2)).item() == pytest.approx(1.0)


def test_the_teachers_own_contribution_is_an_exact_minimiser_of_its_v2_target():
    # teacher = student and M = I: the target is Δh / ‖Δh‖ (align's semantic map), the prediction Δh itself
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(2, 7, 16, generator=g) * torch.rand(2, 7, 1, generator=g) * 20
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 5:] = 0
    target = decompose_recompose(delta, torch.eye(16, dtype=torch.float64)).float()
    h = delta.clone().requires_grad_(True)
    loss = relation_geometry_loss(h, target, mask)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert h.grad.abs().max().item() < 1e-6
    # the one-sided normalisation this replaces left the student's own contribution 0.36 away in the issue
    assert relation_geometry_loss(delta + torch.randn(2, 7, 16, generator=g), target, mask).item() > 1e-3


def test_topk_kl_equals_exact_kl_when_k_is_the_vocabulary_and_is_zero_for_equal_models():
    g = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    student_logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    t = torch.log_softmax(teacher_logits, -1)
    s = torch.log_softmax(student_logits, -1)
    exact = (t.exp() * (t - s)).sum(-1).mean()
    top, ids = t.sort(dim=-1, descending=True)
    rest = torch.full((2, 3), -1e30, dtype=torch.float64)  # no mass outside all 7 tokens
    mask = torch.ones(2, 3)
    assert topk_kl_loss(student_logits, top, ids, rest, mask).item() == pytest.approx(exact.item(), rel=1e-5)
    k = 3
    partial_rest = torch.log1p(-top[..., :k].exp().sum(-1))
    assert topk_kl_loss(
        teacher_logits, top[..., :k], ids[..., :k], partial_rest, mask
    ).item() == pytest.approx(0.0, abs=1e-6)
    approx = topk_kl_loss(student_logits, top[..., :k], ids[..., :k], partial_rest, mask).item()
    assert 0.0 <= approx <= exact.item() + 1e-9  # merging buckets never increases KL


def test_topk_kl_respects_the_mask():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 5, generator=g)
    t = torch.log_softmax(torch.randn(1, 2, 5, generator=g), -1)
    top, ids = t.topk(2, -1)
    rest = torch.log1p(-top.exp().sum(-1))
    mask = torch.tensor([[1, 0]])
    changed = logits.clone()
    changed[0, 1] += 50
    assert topk_kl_loss(logits, top, ids, rest, mask).item() == pytest.approx(
        topk_kl_loss(changed, top, ids, rest, mask).item()
    )


def test_topk_kl_reads_the_cached_teacher_ids_as_student_ids():
    g = torch.Generator().manual_seed(2)
    tokens = [f"t{i}" for i in range(9)]
    teacher = torch.log_softmax(torch.randn(2, 3, 9, generator=g, dtype=torch.float64), -1)
    logits = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    top, ids = teacher.topk(4, dim=-1)
    rest = torch.log1p(-top.exp().sum(-1))
    mask = torch.ones(2, 3)
    matched = topk_kl_loss(logits, top, ids, rest, mask).item()

    perm = torch.randperm(9, generator=g)  # the student's row j is the teacher's token perm[j]
    vocab = align_vocabularies(tokens, [tokens[i] for i in perm])
    permuted = logits[..., perm]
    assert topk_kl_loss(permuted, top, vocab.student_ids(ids), rest, mask).item() == pytest.approx(
        matched,
        rel=1e-6,  # the loss runs in float32
    )
    assert topk_kl_loss(permuted, top, ids, rest, mask).item() != pytest.approx(matched, rel=1e-3)

    # a student without the teacher's top token at position (0, 0): its mass joins the rest bucket
    x = int(ids[0, 0, 0])
    lacking = align_vocabularies(tokens, tokens[:x] + tokens[x + 1 :], min_overlap=0.5)
    fewer = torch.cat([logits[..., :x], logits[..., x + 1 :]], dim=-1)
    student_ids = lacking.student_ids(ids)
    assert (student_ids == -1).sum() == (ids == x).sum() >= 1
    expected = []
    for b, t in itertools.product(range(2), range(3)):
        p, q = teacher[b, t].exp(), torch.softmax(fewer[b, t], -1)
        present = [int(i) for i in ids[b, t] if i != x]
        p_top, q_top = p[present], q[[i - (i > x) for i in present]]
        p_rest, q_rest = 1 - p_top.sum(), 1 - q_top.sum()
        expected.append((p_top * (p_top / q_top).log()).sum() + p_rest * (p_rest / q_rest).log())
    got = topk_kl_loss(fewer, top, student_ids, rest, mask).item()
    assert got == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)


def kd_case():
    """One sequence of 5 positions over a vocabulary of 6: position 4 is padding, positions 1 and 2 predict
    answer tokens; the teacher's top-3 at each position, one of them a token the student lacks (id −1)."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 5, 6, generator=g, dtype=torch.float64)
    teacher = torch.log_softmax(torch.randn(1, 5, 6, generator=g, dtype=torch.float64), -1)
    top, ids = teacher.topk(3, dim=-1)
    rest = torch.log1p(-top.exp().sum(-1))
    ids[0, 3, 1] = -1  # the student lacks this teacher token: its mass joins the rest bucket
    labels = torch.tensor([[-100, -100, 2, 5, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return logits, labels, top, ids, rest, mask


def test_kd_loss_against_a_float64_reference_by_hand():
    logits, labels, top, ids, rest, mask = kd_case()
    student = torch.log_softmax(logits, -1)[0]  # float64 [T, V]
    ce = -(student[1, 2] + student[2, 5]) / 2  # positions 1 and 2 predict labels 2 and 5
    kl = []
    for t in range(4):  # every real token
        p_top = [float(top[0, t, j].exp()) for j in range(3) if ids[0, t, j] >= 0]
        q_top = [float(student[t, int(i)].exp()) for i in ids[0, t] if i >= 0]
        p_rest = 1 - sum(p_top)
        q_rest = 1 - sum(q_top)
        kl.append(sum(p * math.log(p / q) for p, q in zip(p_top, q_top)) + p_rest * math.log(p_rest / q_rest))
    for weight in (0.25, 0.5, 1.0):
        expected = (1 - weight) * float(ce) + weight * sum(kl) / len(kl)
        got = kd_loss(logits, labels, top, ids, rest, mask, weight).item()
        assert got == pytest.approx(expected, rel=1e-6)  # the loss runs in float32


def test_kd_weight_0_is_cross_entropy_exactly_and_the_teacher_itself_leaves_no_kl():
    logits, labels, top, ids, rest, mask = kd_case()
    assert torch.equal(kd_loss(logits, labels, top, ids, rest, mask, 0.0), cross_entropy_loss(logits, labels))
    # the student's own distribution as the teacher: the KL part is zero, only (1 − w)·CE is left
    own = torch.log_softmax(logits, -1)
    own_top, own_ids = own.topk(3, dim=-1)
    own_rest = torch.log1p(-own_top.exp().sum(-1))
    ce = cross_entropy_loss(logits, labels).item()
    assert kd_loss(logits, labels, own_top, own_ids, own_rest, mask, 1.0).item() == pytest.approx(
        0.0, abs=1e-6
    )
    assert kd_loss(logits, labels, own_top, own_ids, own_rest, mask, 0.5).item() == pytest.approx(
        0.5 * ce, rel=1e-6
    )
    assert kd_loss(logits, labels, top, ids, rest, mask, 1.0).item() > 1e-3  # another teacher is not free
