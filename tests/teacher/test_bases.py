"""Semantic bases against float64 torch.linalg.pinv, the bases store, and vocabulary alignment."""

from __future__ import annotations

import pytest
import torch

from semalign.errors import SemalignError
from semalign.store import open_store
from semalign.teacher.bases import (
    VocabAlignment,
    align_vocabularies,
    gram,
    inverse_gram,
    pinv_rows,
    vocabulary_tokens,
    write_bases,
)
from semalign.testing import tiny_model, tiny_tokenizer


def _reference(w: torch.Tensor) -> torch.Tensor:
    """Unit rows of float64 pinv(w)ᵀ, zero rows left zero: `w: [V, D]` -> `[V, D]`."""
    rows = torch.linalg.pinv(w.double()).T
    rows[~w.any(dim=1)] = (
        0.0  # exact in theory; SVD round-off would otherwise normalise to a random direction
    )
    norms = rows.norm(dim=1, keepdim=True)
    return rows / torch.where(norms > 0, norms, 1.0)


def _max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest row-wise relative error (absolute for rows that should be zero)."""
    return ((got.double() - want).norm(dim=1) / want.norm(dim=1).clamp_min(1.0e-30)).max().item()


@pytest.mark.parametrize("vocab, d, chunk_rows", [(200, 16, 64), (257, 32, 50), (96, 24, 1000)])
def test_chunked_pinv_rows_match_float64_pinv(vocab, d, chunk_rows):
    # Columns of different scales make WᵀW far from a multiple of the identity, so a wrong G⁻¹ shows.
    w = torch.randn(vocab, d, generator=torch.Generator().manual_seed(vocab)) * torch.logspace(-1, 1, d)
    got = pinv_rows(w, chunk_rows=chunk_rows)
    assert got.shape == (vocab, d) and got.dtype == torch.float32
    assert _max_relative_error(got, _reference(w)) < 1e-4
    assert torch.allclose(got.norm(dim=1), torch.ones(vocab), atol=1e-6)


def test_gain_folds_into_the_head():
    w = torch.randn(150, 20, generator=torch.Generator().manual_seed(1))
    gain = torch.rand(20, generator=torch.Generator().manual_seed(2)) + 0.5
    got = pinv_rows(w, chunk_rows=64, gain=gain)
    assert _max_relative_error(got, _reference(w * gain)) < 1e-4
    assert _max_relative_error(got, _reference(w)) > 1e-2  # the gain must actually change the bases


def test_rank_deficient_matrix_is_refused():
    w = torch.randn(100, 8)
    w[:, 3] = w[:, 5]
    with pytest.raises(SemalignError, match="rank-deficient or ill-conditioned"):
        inverse_gram(gram(w, 32))


def test_zero_gain_is_refused():
    with pytest.raises(SemalignError, match="zero entries"):
        pinv_rows(torch.randn(50, 4), gain=torch.tensor([1.0, 0.0, 1.0, 1.0]))


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2", seed=3, vocab_size=300, hidden_size=32, num_layers=2)


def test_write_bases_on_a_tiny_model(tmp_path, model):
    timings = write_bases(model, tmp_path / "b.zarr", model_id="tiny-qwen2", chunk_rows=128)
    assert timings["total"] > 0 and {"head_gram", "head_rows", "input_gram", "input_rows"} <= set(timings)
    store = open_store(tmp_path / "b.zarr")
    assert store.manifest["model"] == "tiny-qwen2" and store.manifest["variants"] == [
        "head",
        "head_normed",
        "input",
    ]
    assert (store.manifest["vocab_size"], store.manifest["d_model"]) == (300, 32)

    head = model.get_output_embeddings().weight.detach()
    embed = model.get_input_embeddings().weight.detach()
    gain = model.model.norm.weight.detach()
    assert not torch.allclose(gain, torch.ones_like(gain))  # else head_normed would not be tested
    references = {
        "head": _reference(head),
        "head_normed": _reference(head * gain),
        "input": _reference(embed),
    }
    for name, want in references.items():
        got = store.read(name)
        assert got.shape == (300, 32) and got.dtype == torch.float32
        assert _max_relative_error(got, want) < 1e-4, name
    # The padding token's embedding row is all zeros: its basis has no direction and must stay 0, not NaN.
    assert not embed[0].any() and not store.read("input")[0].any()
    assert torch.allclose(store.read("input")[1:].norm(dim=1), torch.ones(299), atol=1e-6)


def test_write_bases_twice_writes_the_same_bytes(tmp_path, model):
    # A DVC out: a rerun on the same machine must hash the same (no timings or paths inside).
    for name in ("a", "b"):
        write_bases(model, tmp_path / name / "b.zarr", model_id="tiny", chunk_rows=128)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 5 and "b.zarr/manifest.json" in {str(f) for f in files}
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_write_bases_resumes_and_rebuilds_for_other_weights(tmp_path, model):
    first = write_bases(model, tmp_path / "b.zarr", model_id="tiny@1", chunk_rows=128)
    again = write_bases(model, tmp_path / "b.zarr", model_id="tiny@1", chunk_rows=128)
    assert "head_gram" in first and set(again) == {"total"}  # a finished store: nothing recomputed
    other = write_bases(model, tmp_path / "b.zarr", model_id="tiny@2", chunk_rows=128)
    assert {"head_gram", "input_gram"} <= set(other)
    assert open_store(tmp_path / "b.zarr").manifest["model"] == "tiny@2"


def test_write_bases_tied_model_and_variant_subset(tmp_path):
    tied = tiny_model("llama", seed=4, vocab_size=200, hidden_size=32, num_layers=2, tie_word_embeddings=True)
    timings = write_bases(
        tied, tmp_path / "b.zarr", model_id="tied", variants=("head", "input"), chunk_rows=64
    )
    assert "input_gram" not in timings  # the tied embedding is the head: solved once
    store = open_store(tmp_path / "b.zarr")
    assert sorted(store.arrays) == ["head", "input"]
    assert torch.equal(store.read("head"), store.read("input"))
    with pytest.raises(SemalignError, match="invalid"):
        write_bases(tied, tmp_path / "c.zarr", model_id="tied", variants=("output",))


def test_align_identical_vocabularies():
    tokens = [f"t{i}" for i in range(10)]
    alignment = align_vocabularies(tokens, list(tokens))
    assert alignment.identical and alignment.kept == 10
    assert torch.equal(alignment.teacher_index, torch.arange(10))
    assert torch.equal(alignment.student_index, torch.arange(10))


def test_align_vocabularies_of_different_sizes():
    # 32000 vs 32001 in miniature: the student has one extra token inserted in the middle.
    teacher = [f"t{i}" for i in range(40)]
    student = teacher[:20] + ["<extra>"] + teacher[20:]
    alignment = align_vocabularies(teacher, student)
    assert not alignment.identical and alignment.kept == 40
    assert torch.equal(alignment.teacher_index, torch.arange(40))
    assert torch.equal(alignment.student_index, torch.cat([torch.arange(20), torch.arange(21, 41)]))
    assert [student[i] for i in alignment.student_index] == [teacher[i] for i in alignment.teacher_index]


def test_low_overlap_is_refused():
    teacher = [f"t{i}" for i in range(30)]
    student = teacher[:10] + [f"s{i}" for i in range(30)]
    with pytest.raises(
        SemalignError,
        match=r"teacher \(30 tokens\) and student \(40 tokens\) share only 10 tokens \(25.0% < "
        r"align.min_vocab_overlap 90%\).*or lower align.min_vocab_overlap in params.yaml",
    ):
        align_vocabularies(teacher, student)
    assert align_vocabularies(teacher, student, min_overlap=0.2).kept == 10


def test_vocabulary_tokens_pad_to_the_embedding_rows():
    tokenizer = tiny_tokenizer()
    n = len(tokenizer)
    tokens = vocabulary_tokens(tokenizer, n + 3)
    assert len(tokens) == n + 3 and len(set(tokens)) == n + 3
    assert tokens[:n] == tokenizer.convert_ids_to_tokens(list(range(n)))
    assert tokens[n:] == [f"<|semalign_unused_{row}|>" for row in range(n, n + 3)]
    # Two models of one family padded alike align row for row.
    assert align_vocabularies(tokens, vocabulary_tokens(tokenizer, n + 3)).identical
    with pytest.raises(SemalignError, match="embedding rows"):
        vocabulary_tokens(tokenizer, n - 1)


def test_vocab_alignment_maps_teacher_ids_and_round_trips(tmp_path):
    teacher = [f"t{i}" for i in range(6)]
    student = ["t5", "t0", "<extra>", "t2", "t1", "t4"]  # t3 missing, an extra token, order shuffled
    vocab = align_vocabularies(teacher, student, min_overlap=0.5)
    assert vocab.teacher_to_student().tolist() == [1, 4, 3, -1, 5, 0]
    assert (vocab.kept, vocab.share) == (5, pytest.approx(5 / 6))
    # labels keep their −100, a teacher token the student lacks reads −1
    labels = torch.tensor([[-100, 0, 3, 5]])
    assert vocab.student_ids(labels).tolist() == [[-100, 1, -1, 0]]
    # inputs: padding the student lacks becomes id 0, a real token it lacks stops
    ids, mask = torch.tensor([[2, 1, 3, 3]]), torch.tensor([[1, 1, 0, 0]])
    assert vocab.student_inputs(ids, mask).tolist() == [[3, 4, 0, 0]]
    with pytest.raises(
        SemalignError, match=r"2 tokens of the data \(teacher id 3 first\) are not in the student"
    ):
        vocab.student_inputs(ids, torch.ones_like(mask))
    vocab.save(tmp_path / "vocab.safetensors")
    loaded = VocabAlignment.load(tmp_path / "vocab.safetensors")
    assert torch.equal(loaded.teacher_index, vocab.teacher_index)
    assert torch.equal(loaded.student_index, vocab.student_index)
    assert (loaded.teacher_size, loaded.student_size, loaded.identical) == (6, 6, False)
    same = align_vocabularies(teacher, list(teacher))
    assert same.student_ids(labels) is labels  # identical vocabularies: the ids untouched
