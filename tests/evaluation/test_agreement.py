"""Teacher agreement: the bucketed KL against float64 full-vocabulary references, the teacher against its own
cache, paired comparisons and gap closed by hand, and refusals of mismatched caches and rows."""

import copy

import pytest
import torch

from cache_fixtures import NUM_LAYERS, WIDTH, build_cache, make_inputs
from semalign.errors import SemalignError
from semalign.evaluation.agreement import AgreementConfig, agreement_rows
from semalign.evaluation.agreement_summary import (
    agreement_display,
    agreement_table,
    compare_agreement,
    summarise_agreement,
)
from semalign.store import open_store
from semalign.student.objectives import next_token_positions, topk_kl
from semalign.teacher.activations import topk_with_rest
from semalign.teacher.cache import CacheConfig
from semalign.testing import tiny_model

VOCAB = 320  # tiny_model's


def _teacher():
    return tiny_model("qwen2", seed=1, num_layers=NUM_LAYERS, hidden_size=WIDTH)


def _student():
    return tiny_model("qwen2", seed=2, num_layers=2, hidden_size=32)


def _bucketed_kl64(teacher_logits, model_logits, top_ids):
    """Float64 reference: both full distributions summed into buckets (each top-k id its own, every other
    token the rest), then KL(teacher ‖ model) over the buckets. `[..., vocab]`, `[..., k]` -> `[...]`."""
    k = top_ids.shape[-1]
    bucket = torch.full((*top_ids.shape[:-1], teacher_logits.shape[-1]), k, dtype=torch.int64)
    bucket.scatter_(-1, top_ids.long(), torch.arange(k).expand_as(top_ids))
    p, q = (
        torch.zeros(*top_ids.shape[:-1], k + 1, dtype=torch.float64).scatter_add_(
            -1, bucket, torch.softmax(logits.double(), -1)
        )
        for logits in (teacher_logits, model_logits)
    )
    return torch.where(p > 0, p * (p.log() - q.log()), 0.0).sum(-1)  # an empty rest bucket (k = vocab) adds 0


def test_topk_kl_is_the_exact_bucketed_kl_and_never_above_the_full_kl():
    g = torch.Generator().manual_seed(0)
    teacher_logits = 3 * torch.randn(2, 5, 50, generator=g, dtype=torch.float64)
    model_logits = 3 * torch.randn(2, 5, 50, generator=g, dtype=torch.float64)
    full = (
        torch.softmax(teacher_logits, -1)
        * (torch.log_softmax(teacher_logits, -1) - torch.log_softmax(model_logits, -1))
    ).sum(-1)
    for k in (1, 4, 49, 50):
        top, ids, rest = topk_with_rest(teacher_logits, k)  # float32, as the cache stores it
        kl = topk_kl(model_logits, top, ids, rest)
        reference = _bucketed_kl64(teacher_logits, model_logits, ids)
        torch.testing.assert_close(kl.double(), reference, rtol=1e-4, atol=2e-6)
        assert (kl.double() <= full * (1 + 1e-4)).all()  # merging outcomes never raises a KL (float32 slack)
    torch.testing.assert_close(kl.double(), full, rtol=1e-4, atol=2e-6)  # k = vocab: the full KL
    assert torch.equal(topk_kl(teacher_logits, top, ids, rest) < 1e-5, torch.ones(2, 5, dtype=torch.bool))


def test_topk_kl_stays_finite_when_the_top_k_hold_all_the_mass_or_the_model_puts_none_there():
    teacher_logits = torch.full((1, 1, 10), -1e4)
    teacher_logits[..., 3] = 1e4  # all of the teacher's mass on token 3: its rest is log(tiny)
    top, ids, rest = topk_with_rest(teacher_logits, 2)
    model_logits = torch.zeros(1, 1, 10)
    model_logits[..., 3] = -1e4  # the model puts no mass on the teacher's token
    kl = topk_kl(model_logits, top, ids, rest)
    assert torch.isfinite(kl).all() and kl.item() > 1e3
    assert topk_kl(teacher_logits, top, ids, rest).item() == pytest.approx(0.0, abs=1e-6)


def test_answer_positions_are_those_predicting_a_target_token():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, -100]])
    assert next_token_positions(mask, labels, "all").tolist() == [[True, True, True, True, False]]
    assert next_token_positions(mask, labels, "answer").tolist() == [[False, True, True, False, False]]
    with pytest.raises(SemalignError, match="KL positions 'prompt' must be 'all' or 'answer'"):
        next_token_positions(mask, labels, "prompt")


def test_the_teacher_against_its_own_cache_has_kl_0_and_agrees_everywhere(tmp_path):
    encoded = make_inputs(num_examples=5)
    teacher = _teacher()
    build_cache(tmp_path / "a.zarr", CacheConfig(top_k=6, batch_size=2), encoded, teacher, states=False)
    ids = [f"x/{i}" for i in range(5)]
    rows = agreement_rows(teacher, encoded, open_store(tmp_path / "a.zarr"), ids, batch_size=2)
    assert [row["item_id"] for row in rows] == ids
    for row, mask in zip(rows, encoded.attention_mask):
        assert row["tokens"] == int(mask.sum()) and row["answer_tokens"] == int(mask.sum()) - 1
        assert row["kl"] == pytest.approx(0.0, abs=1e-6) and row["answer_kl"] == pytest.approx(0.0, abs=1e-6)
        assert row["top1"] == row["answer_top1"] == 1.0


def test_per_example_kl_and_top1_match_a_float64_full_forward_reference(tmp_path):
    encoded = make_inputs(num_examples=5)
    teacher = _teacher()
    # a sharper teacher than random init, and a student = the teacher with a perturbed head, so that KL and
    # top-1 agreement are far from their trivial values
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40)
        student = copy.deepcopy(teacher)
        student.lm_head.weight.add_(
            torch.randn(student.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    build_cache(tmp_path / "a.zarr", CacheConfig(top_k=6, batch_size=2), encoded, teacher, states=False)
    cache = open_store(tmp_path / "a.zarr")
    rows = agreement_rows(student, encoded, cache, [str(i) for i in range(5)], batch_size=3)
    one_by_one = agreement_rows(student, encoded, cache, [str(i) for i in range(5)], batch_size=1)
    for row, single in zip(rows, one_by_one):  # batching and padding do not matter
        assert row.pop("item_id") == single.pop("item_id") and row == pytest.approx(single, rel=1e-5)
    teacher64, student64 = copy.deepcopy(teacher).double(), copy.deepcopy(student).double()
    for i, row in enumerate(rows):
        n = int(encoded.attention_mask[i].sum())
        with torch.no_grad():
            t, s = (m(encoded.input_ids[i : i + 1, :n]).logits[0] for m in (teacher64, student64))
        ids = cache.read_rows("topk_ids", i, i + 1)[0, :n]
        kl = _bucketed_kl64(t, s, ids)
        top1 = (s.argmax(-1) == t.argmax(-1)).double()
        assert row["kl"] == pytest.approx(kl.mean().item(), rel=1e-4)
        assert row["answer_kl"] == pytest.approx(kl[: n - 1].mean().item(), rel=1e-4)
        assert row["top1"] == pytest.approx(top1.mean().item()) and row["kl"] > 0.05
    assert 0 < summarise_agreement(rows)["top1"] < 1


def test_a_cache_of_other_data_or_another_vocabulary_is_refused(tmp_path):
    encoded = make_inputs(num_examples=3)
    build_cache(tmp_path / "a.zarr", CacheConfig(top_k=4, batch_size=2), encoded, states=False)
    cache = open_store(tmp_path / "a.zarr")
    other = make_inputs(num_examples=3, seed=1)
    with pytest.raises(SemalignError, match="made from other token data than this agreement split"):
        agreement_rows(_student(), other, cache, ["a", "b", "c"])
    with pytest.raises(SemalignError, match="2 item ids for 3 examples"):
        agreement_rows(_student(), encoded, cache, ["a", "b"])
    assert int(cache.read("topk_ids").max()) >= 300  # inputs are < 300: a 300-token model reads them
    small = tiny_model("qwen2", seed=2, num_layers=1, hidden_size=32, vocab_size=300)
    with pytest.raises(
        SemalignError, match=r"top-k ids reach \d+ but this model's vocabulary has 300 tokens"
    ):
        agreement_rows(small, encoded, cache, ["a", "b", "c"])
    with pytest.raises(SemalignError, match="agree.batch_size is 0"):
        AgreementConfig(batch_size=0)


def _rows(kls, top1s, ids=None):
    ids = ids or [f"q{i}" for i in range(len(kls))]
    return [
        {
            "item_id": i,
            "tokens": 4,
            "answer_tokens": 1,
            "kl": k,
            "top1": a,
            "answer_kl": 2 * k,
            "answer_top1": a,
        }
        for i, k, a in zip(ids, kls, top1s)
    ]


def test_gap_closed_and_paired_differences_by_hand():
    student = _rows([1.0, 2.0, 3.0], [0.0, 0.5, 0.5])
    variant = _rows([0.5, 1.0, 1.5], [0.5, 0.5, 1.0])
    c = compare_agreement(student, variant)
    assert c["kl_diff"] == pytest.approx(-1.0) and c["kl_gap_closed"] == pytest.approx(0.5)
    assert c["answer_kl_gap_closed"] == pytest.approx(0.5)
    # the gap closed's interval is the difference's interval over the student's fixed KL (mean 2)
    assert c["kl_gap_closed_low"] == pytest.approx(-c["kl_diff_high"] / 2)
    assert c["kl_gap_closed_high"] == pytest.approx(-c["kl_diff_low"] / 2)
    assert c["kl_gap_closed_low"] <= 0.5 <= c["kl_gap_closed_high"]
    assert c["top1_diff"] == pytest.approx(1 / 3) and c["kl_diff_low"] <= -1.0 <= c["kl_diff_high"] < 0
    same = compare_agreement(student, student)
    assert same["kl_diff"] == same["kl_diff_low"] == same["kl_diff_high"] == 0 and same["kl_gap_closed"] == 0
    assert compare_agreement(_rows([0.0], [1.0]), _rows([0.1], [1.0]))["kl_gap_closed"] is None
    with pytest.raises(SemalignError, match="not the same examples in the same order"):
        compare_agreement(student, list(reversed(variant)))
    s = summarise_agreement(variant)
    assert (s["n"], s["tokens"], s["answer_tokens"]) == (3, 12, 3)
    assert s["kl"] == pytest.approx(1.0) and s["kl_ci_low"] <= 1.0 <= s["kl_ci_high"]


def test_the_table_pairs_every_variant_with_the_student_and_displays_it():
    rows = {"mmlu": {"v1": _rows([0.5, 1.0], [1.0, 0.0]), "student": _rows([1.0, 1.0], [0.0, 0.0])}}
    table = agreement_table(rows)
    assert list(table["mmlu"]) == ["student", "v1"] and "vs_student" not in table["mmlu"]["student"]
    assert table["mmlu"]["v1"]["vs_student"]["kl_gap_closed"] == pytest.approx(0.25)
    (part,) = agreement_display(table)
    assert [row[0] for row in part["rows"]] == ["student", "v1"]
    assert part["rows"][1][4] == "0.250" and part["rows"][0][3] == "—"
    assert "vs_student" not in agreement_table({"mmlu": {"v1": rows["mmlu"]["v1"]}})["mmlu"]["v1"]


def test_every_variant_is_also_paired_with_the_sft_and_kd_baselines_that_ran():
    rows = {
        "student": _rows([1.0, 1.0], [0.0, 0.0]),
        "kd": _rows([0.5, 0.5], [1.0, 0.0]),
        "sft": _rows([0.8, 1.0], [0.0, 0.0]),
        "v1": _rows([0.6, 0.6], [1.0, 0.0]),
    }
    table = agreement_table({"mmlu": rows})["mmlu"]
    assert set(table["v1"]) >= {"vs_student", "vs_sft", "vs_kd"}
    assert table["v1"]["vs_kd"]["kl_diff"] == pytest.approx(0.1)
    assert table["v1"]["vs_sft"]["kl_diff"] == pytest.approx(-0.3)
    assert "vs_kd" not in table["kd"] and "vs_sft" in table["kd"] and "vs_sft" not in table["sft"]
    (part,) = agreement_display({"mmlu": table})
    assert part["headers"][-2:] == ["KL − sft", "KL − kd"]
    v1 = next(row for row in part["rows"] if row[0] == "v1")
    assert v1[-1].startswith("+0.1 [") and v1[-2].startswith("-0.3 [")
