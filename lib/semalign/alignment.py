"""Latent semantic alignment (paper §4.2): decompose on teacher bases, recompose on student bases.

With unit-norm bases stored as rows (`s_i` = row i of a `[vocab, d]` array), eq. 1–2 read
    a = S_Tᵀ h / ‖h‖        (cosine coefficients, `[vocab]`)
    h̃ = S_S a               (`[d_student]`)
which is the linear map h̃ = M h / ‖h‖ with M = S_S S_Tᵀ = Σ_i s_i^S (s_i^T)ᵀ, `[d_student, d_teacher]`.
M is computed once per model pair by streaming the two bases in row chunks (float64 accumulation),
so the `[tokens, vocab]` coefficient matrix is never formed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from semalign.errors import SemalignError
from semalign.progress import progress


@dataclass(frozen=True)
class AlignConfig:
    """`align` section: bases variant of the semantic map ("head" is the paper's); whether non-integer
    depth ratios interpolate adjacent teacher layers (§4.1); the random-basis control's seed; vocabulary
    rows per read."""

    bases: str = "head"
    interpolate: bool = True
    control_seed: int = 0
    chunk_rows: int = 16384


RowReader = Callable[[int, int], torch.Tensor]  # (start, stop) -> rows [stop - start, d]


def folded_map(
    read_student: RowReader, read_teacher: RowReader, vocab_size: int, chunk_rows: int = 16384
) -> torch.Tensor:
    """M = Σ_i s_i^S (s_i^T)ᵀ, `[d_student, d_teacher]` float64, from row readers over index-aligned bases.

    Each reader returns rows `[stop - start, d]` of a unit-norm bases array; rows i of both readers must
    denote the same vocabulary entry (see semalign.bases.align_vocabularies).
    """
    total = None
    starts = range(0, vocab_size, chunk_rows)
    for start in progress(starts, desc="align: folded map", total=len(starts), unit="chunk"):
        stop = min(start + chunk_rows, vocab_size)
        student, teacher = read_student(start, stop), read_teacher(start, stop)
        if student.shape[0] != teacher.shape[0]:
            raise SemalignError(
                f"bases rows {start}:{stop} differ in count (student {student.shape[0]}, teacher {teacher.shape[0]}); "
                "the two bases stores are not vocabulary-aligned: rerun `dvc repro bases`"
            )
        # Each chunk's product in the bases' own precision, the sum over chunks in float64.
        part = (student.T @ teacher).double()
        total = part if total is None else total + part
    return total


def decompose_recompose(h: torch.Tensor, folded: torch.Tensor) -> torch.Tensor:
    """h̃ = M h / ‖h‖ for every row: h `[tokens, d_teacher]` -> `[tokens, d_student]` (eq. 1–2, folded).

    Zero rows (e.g. padding) map to zero instead of dividing by zero.
    """
    norms = h.norm(dim=-1, keepdim=True)
    unit = h / torch.where(norms > 0, norms, torch.ones_like(norms))
    return unit.to(folded.dtype) @ folded.T


def decompose_recompose_naive(h: torch.Tensor, teacher_bases: torch.Tensor, student_bases: torch.Tensor) -> torch.Tensor:
    """The same map computed literally: coefficients a `[tokens, vocab]`, then a S_S. For tests and benches."""
    coefficients = (h / h.norm(dim=-1, keepdim=True)) @ teacher_bases.T
    return coefficients @ student_bases


def interpolate(h_a: torch.Tensor, h_b: torch.Tensor, lam: float) -> torch.Tensor:
    """(1 − λ) h_a + λ h_b (paper §4.1): the teacher quantity at a non-integer depth."""
    if not 0.0 <= lam <= 1.0:
        raise SemalignError(f"interpolation weight λ={lam} is outside [0, 1]; check pairs.json")
    return h_a if lam == 0.0 else h_b if lam == 1.0 else (1.0 - lam) * h_a + lam * h_b


def row_cosine(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine between matching rows of x and y `[tokens, d]` -> `[tokens]` (computed in float64)."""
    x, y = x.double(), y.double()
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=eps)


def reconstruction_cosine(h: torch.Tensor, self_map: torch.Tensor) -> torch.Tensor:
    """Fig. 2's fidelity: cos(h, S Sᵀ h / ‖h‖) per row of h `[tokens, d]`, with `self_map` = S Sᵀ `[d, d]`
    (`folded_map` with the same model's bases on both sides)."""
    return row_cosine(h, decompose_recompose(h, self_map))


def random_self_map(count: int, dim: int, seed: int = 0, chunk_rows: int = 16384) -> torch.Tensor:
    """R Rᵀ `[dim, dim]` float64 for `count` random unit vectors in R^dim: the control for Fig. 2.

    With count ≫ dim, R Rᵀ ≈ (count / dim)·I, so any vector is reconstructed almost perfectly: a high
    fidelity from semantic bases means little unless it beats this control.
    """
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, count, chunk_rows):
        rows = torch.randn(min(chunk_rows, count - start), dim, generator=generator)
        rows /= rows.norm(dim=-1, keepdim=True)
        total += (rows.T @ rows).double()
    return total


def isotropy(self_map: torch.Tensor) -> float:
    """λ_min / λ_max of a symmetric S Sᵀ `[d, d]`: 1 when the bases spread evenly over every direction
    (then decompose→recompose returns any vector's direction unchanged), 0 when a direction is missing."""
    eigenvalues = torch.linalg.eigvalsh(self_map.double())
    return float(eigenvalues[0].clamp(min=0) / eigenvalues[-1])
