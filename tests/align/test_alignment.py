"""The folded alignment map equals eq. 1–2 computed literally, over the tokens two vocabularies share; helpers
behave at the edges."""

import pytest
import torch

from semalign.align.alignment import (
    AlignConfig,
    decompose_recompose,
    decompose_recompose_naive,
    fold_maps,
    folded_map,
    interpolate,
    random_self_map,
    reconstruction_cosine,
    row_cosine,
    shared_row_reader,
)
from semalign.errors import SemalignError
from semalign.store import ArraySpec, StoreWriter, open_store
from semalign.teacher.bases import align_vocabularies


def unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_folded_equals_naive_in_float64():
    g = torch.Generator().manual_seed(0)
    vocab, d_t, d_s = 1000, 24, 16
    s_t = unit_rows(torch.randn(vocab, d_t, generator=g, dtype=torch.float64))
    s_s = unit_rows(torch.randn(vocab, d_s, generator=g, dtype=torch.float64))
    h = torch.randn(37, d_t, generator=g, dtype=torch.float64) * 5
    folded = folded_map(lambda a, b: s_s[a:b], lambda a, b: s_t[a:b], vocab, chunk_rows=300)
    assert folded.shape == (d_s, d_t) and folded.dtype == torch.float64
    naive = decompose_recompose_naive(h, s_t, s_s)
    fast = decompose_recompose(h, folded)
    assert ((fast - naive).norm() / naive.norm()).item() < 1e-5
    torch.testing.assert_close(folded, s_s.T @ s_t)


def test_alignment_is_scale_invariant_and_maps_zero_rows_to_zero():
    folded = torch.randn(4, 6, dtype=torch.float64)
    h = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(decompose_recompose(h * 7.5, folded), decompose_recompose(h, folded))
    padded = torch.cat([h, torch.zeros(2, 6, dtype=torch.float64)])
    out = decompose_recompose(padded, folded)
    assert torch.isfinite(out).all() and out[3:].abs().max() == 0


def test_folded_map_rejects_misaligned_bases():
    with pytest.raises(SemalignError, match="not vocabulary-aligned"):
        folded_map(
            lambda a, b: torch.ones(b - a, 2), lambda a, b: torch.ones(max(b - a - 1, 0), 3), 10, chunk_rows=5
        )


def test_interpolate_and_cosine():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    torch.testing.assert_close(interpolate(a, b, 0.25), torch.full((2, 3), 0.25))
    assert interpolate(a, b, 1.0) is b
    with pytest.raises(SemalignError, match="outside"):
        interpolate(a, b, 1.5)
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    torch.testing.assert_close(row_cosine(x, y), torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_reconstruction_cosine_of_a_complete_orthonormal_basis_is_one():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    bases = q.T  # rows are an orthonormal basis: S Sᵀ = I
    self_map = folded_map(lambda a, b: bases[a:b], lambda a, b: bases[a:b], 6, chunk_rows=4)
    h = torch.randn(10, 6, dtype=torch.float64)
    torch.testing.assert_close(reconstruction_cosine(h, self_map), torch.ones(10, dtype=torch.float64))
    # a basis missing a direction cannot reconstruct vectors along it
    partial = bases[:5]
    partial_map = folded_map(lambda a, b: partial[a:b], lambda a, b: partial[a:b], 5)
    assert decompose_recompose(bases[5:6], partial_map).norm().item() < 1e-12


def test_random_control_approaches_a_multiple_of_identity():
    dim, count = 8, 20000
    control = random_self_map(count, dim, seed=1, chunk_rows=3000)
    torch.testing.assert_close(
        control / (count / dim), torch.eye(dim, dtype=torch.float64), atol=0.05, rtol=0
    )
    h = torch.randn(50, dim, dtype=torch.float64)
    assert reconstruction_cosine(h, control).min() > 0.99


@pytest.mark.parametrize("count, dim", [(64, 16), (512, 16), (4000, 32), (12, 24)])
def test_random_control_cosine_matches_its_closed_form(count, dim):
    from semalign.align.alignment import random_control_cosine

    h = torch.randn(400, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(count))
    measured = [reconstruction_cosine(h, random_self_map(count, dim, seed=s)).mean().item() for s in range(8)]
    assert sum(measured) / len(measured) == pytest.approx(random_control_cosine(count, dim), abs=0.02)


def test_isotropy_is_one_for_identity_and_zero_for_a_missing_direction():
    from semalign.align.alignment import isotropy

    assert isotropy(torch.eye(4, dtype=torch.float64) * 3) == pytest.approx(1.0)
    assert isotropy(torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))) == 0.0


def bases_store(path, rows: torch.Tensor, chunk_rows: int = 16):
    """A finished bases store holding `rows` `[V, d]` as its "head" variant."""
    spec = ArraySpec(tuple(rows.shape), "float32", chunk_rows)
    with StoreWriter(path, {"head": spec}, "test") as writer:
        for chunk in range(spec.num_chunks):
            start, stop = spec.rows(chunk)
            writer.write_chunk("head", chunk, rows[start:stop])
        writer.finalize({"vocab_size": rows.shape[0], "d_model": rows.shape[1]})
    return open_store(path)


def fold_by_token(teacher_store, student_store, teacher_tokens, student_tokens, chunk_rows=16):
    """`fold`'s semantic map: M over the tokens the two vocabularies share."""
    vocab = align_vocabularies(teacher_tokens, student_tokens)
    index = (
        {"t": None, "s": None} if vocab.identical else {"t": vocab.teacher_index, "s": vocab.student_index}
    )
    return vocab, folded_map(
        shared_row_reader(student_store, "head", index["s"]),
        shared_row_reader(teacher_store, "head", index["t"]),
        vocab.kept,
        chunk_rows,
    )


@pytest.fixture
def matched(tmp_path):
    """Teacher and student bases over one 50-token vocabulary, and M matched by index."""
    g = torch.Generator().manual_seed(4)
    tokens = [f"tok{i}" for i in range(50)]
    s_t, s_s = unit_rows(torch.randn(50, 12, generator=g)), unit_rows(torch.randn(50, 8, generator=g))
    teacher = bases_store(tmp_path / "teacher.zarr", s_t)
    vocab, m = fold_by_token(teacher, bases_store(tmp_path / "student.zarr", s_s), tokens, list(tokens))
    assert vocab.identical and vocab.kept == 50
    # identical vocabularies take the index-aligned path unchanged: contiguous rows, one chunk at a time
    assert torch.equal(m, folded_map(lambda a, b: s_s[a:b], lambda a, b: s_t[a:b], 50, 16))
    return tokens, s_t, s_s, teacher, m


def test_a_student_with_an_appended_token_folds_to_the_index_matched_map(matched, tmp_path):
    tokens, _, s_s, teacher, m = matched
    extra = unit_rows(torch.randn(1, 8, generator=torch.Generator().manual_seed(5)))
    rows = torch.cat([s_s[:20], extra, s_s[20:]])  # the WizardCoder case: one token more, mid-vocabulary
    student_tokens = tokens[:20] + ["<extra>"] + tokens[20:]
    vocab, appended = fold_by_token(teacher, bases_store(tmp_path / "s.zarr", rows), tokens, student_tokens)
    assert not vocab.identical and (vocab.kept, vocab.student_size) == (50, 51)
    assert vocab.share == pytest.approx(50 / 51)
    assert torch.equal(appended, m)


def test_permuted_student_ids_fold_to_the_same_map(matched, tmp_path):
    tokens, _, s_s, teacher, m = matched
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(6))  # student row j is token perm[j]
    student_tokens = [tokens[i] for i in perm]
    vocab, permuted = fold_by_token(
        teacher, bases_store(tmp_path / "s.zarr", s_s[perm]), tokens, student_tokens
    )
    assert vocab.kept == 50 and torch.equal(vocab.teacher_to_student()[perm], torch.arange(50))
    assert torch.equal(permuted, m)
    # matched by index instead (the old fold), the swapped rows pair the wrong tokens
    wrong = folded_map(lambda a, b: s_s[perm][a:b], lambda a, b: matched[1][a:b], 50, 16)
    assert (wrong - m).abs().max() > 0.1


class _Bases:
    """A bases store in memory: `[vocab, d]` rows per variant and the manifest `fold` reads."""

    def __init__(self, rows: dict[str, torch.Tensor]):
        self.rows = rows
        first = next(iter(rows.values()))
        self.manifest = {"vocab_size": first.shape[0], "d_model": first.shape[1], "variants": list(rows)}

    def read_rows(self, name, start, stop):
        return self.rows[name][start:stop]


def test_fold_maps_makes_every_map_from_the_bases_and_names_a_missing_variant():
    torch.manual_seed(0)
    vocab, d_t, d_s = 300, 12, 8
    teacher = _Bases({v: unit_rows(torch.randn(vocab, d_t, dtype=torch.float64)) for v in ("head", "input")})
    student = _Bases({v: unit_rows(torch.randn(vocab, d_s, dtype=torch.float64)) for v in ("head", "input")})
    config = AlignConfig(bases="input", control_counts=(16,), chunk_rows=64)
    same = align_vocabularies([f"t{i}" for i in range(vocab)], [f"t{i}" for i in range(vocab)])
    maps = fold_maps({"teacher": teacher, "student": student}, same, config)
    torch.testing.assert_close(maps["semantic"], student.rows["input"].T @ teacher.rows["input"])
    torch.testing.assert_close(maps["self_teacher_head"], teacher.rows["head"].T @ teacher.rows["head"])
    assert maps["random_student"].shape == (d_s, d_s) and maps["random_teacher_16"].shape == (d_t, d_t)
    assert len(maps) == 1 + 2 * (2 + 1 + 1)
    with pytest.raises(SemalignError, match="align.bases 'head_normed' was not computed; add it to bases"):
        fold_maps({"teacher": teacher, "student": student}, same, AlignConfig(bases="head_normed"))
