"""Latent semantic alignment (paper §4.2): decompose on teacher bases, recompose on student bases.

With unit-norm bases stored as rows (`s_i` = row i of a `[vocab, d]` array), eq. 1–2 read
    a = S_Tᵀ h / ‖h‖        (cosine coefficients, `[vocab]`)
    h̃ = S_S a               (`[d_student]`)
which is the linear map h̃ = M h / ‖h‖ with M = S_S S_Tᵀ = Σ_i s_i^S (s_i^T)ᵀ, `[d_student, d_teacher]`.
M is computed once per model pair by streaming the two bases in row chunks (float64 accumulation),
so the `[tokens, vocab]` coefficient matrix is never formed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from semalign.config import at_least, between, positive
from semalign.errors import SemalignError
from semalign.progress import progress

if TYPE_CHECKING:  # stores and the vocabulary map are only read here
    from semalign.store import Store
    from semalign.teacher.bases import VocabAlignment

LATENT_MAPS = ("semantic", "ridge", "procrustes")  # see semalign.align.latent_maps
TARGET_MAPS = (*LATENT_MAPS, "random")  # the maps targets can be made with: the three and the random control


@dataclass(frozen=True)
class AlignConfig:
    """`align` section. bases: bases variant of the semantic map ("head" is the paper's); maps: the latent
    maps that make targets, one set each (TARGET_MAPS, distinct); ridge: the ridge map's strength (relative to
    tr(XᵀX)/d); fit_fraction: share of the alignment split's examples that fit maps, the rest is held out for
    every measurement; interpolate: non-integer depth ratios interpolate adjacent teacher layers (§4.1);
    min_vocab_overlap: the least share of the larger vocabulary that teacher and student must share by token;
    control_seed and control_counts: the random-basis control of Fig. 2 (as many vectors as the vocabulary,
    plus this sweep); chunk_rows: vocabulary rows per read."""

    bases: str = "head"
    maps: tuple[str, ...] = ("semantic",)
    ridge: float = positive(0.01)
    fit_fraction: float = 0.5
    interpolate: bool = True
    min_vocab_overlap: float = between(0.9, 0.0, 1.0)
    control_seed: int = at_least(0, 0)
    control_counts: tuple[int, ...] = positive((256, 1024, 4096, 16384, 65536))
    chunk_rows: int = positive(16384)

    def __post_init__(self):
        object.__setattr__(self, "control_counts", tuple(self.control_counts))
        check_maps(self.maps)
        object.__setattr__(self, "maps", tuple(self.maps))
        if not 0.0 < self.fit_fraction < 1.0:
            raise SemalignError(
                f"align.fit_fraction {self.fit_fraction} must be between 0 and 1 (exclusive): "
                "some alignment examples fit the maps, the others measure them"
            )
        if not 0.0 <= self.min_vocab_overlap <= 1.0:
            raise SemalignError(
                f"align.min_vocab_overlap {self.min_vocab_overlap} must be a share between 0 and 1"
            )
        if any(not isinstance(c, int) or c < 1 for c in self.control_counts):
            raise SemalignError(f"align.control_counts {list(self.control_counts)} must be positive integers")


def check_maps(maps: Sequence[str]) -> None:
    """Stop unless `maps` (align.maps) is a non-empty list of distinct names from TARGET_MAPS."""
    allowed = list(TARGET_MAPS)
    if isinstance(maps, str) or not maps:
        shown = repr(maps) if isinstance(maps, str) else "empty"
        raise SemalignError(f"align.maps is {shown}; set a non-empty list of names from {allowed}")
    for name in maps:
        if name not in TARGET_MAPS:
            raise SemalignError(f"align.maps {list(maps)}: map {name!r} is unknown; use names from {allowed}")
        if list(maps).count(name) > 1:
            raise SemalignError(f"align.maps {list(maps)} lists {name!r} twice; list each map once")


RowReader = Callable[[int, int], torch.Tensor]  # (start, stop) -> rows [stop - start, d]


def shared_row_reader(store: Store, variant: str, index: torch.Tensor | None) -> RowReader:
    """Rows of bases `variant` in `store` by position in the shared vocabulary: shared token k is row
    `index[k]` (`VocabAlignment.teacher_index` or `.student_index`); `index` None: row k itself (identical
    vocabularies read contiguous rows, the index-aligned path unchanged)."""
    if index is None:
        return lambda start, stop: store.read_rows(variant, start, stop)
    return lambda start, stop: store.read_selection(variant, index[start:stop])


def folded_map(
    read_student: RowReader, read_teacher: RowReader, vocab_size: int, chunk_rows: int = 16384
) -> torch.Tensor:
    """M = Σ_i s_i^S (s_i^T)ᵀ, `[d_student, d_teacher]` float64, over `vocab_size` shared tokens.

    Each reader returns rows `[stop - start, d]` of a unit-norm bases array; rows i of both readers must
    denote the same token (`shared_row_reader` over semalign.teacher.bases.align_vocabularies).
    """
    total = None
    starts = range(0, vocab_size, chunk_rows)
    for start in progress(starts, desc="align: folded map", total=len(starts), unit="chunk"):
        stop = min(start + chunk_rows, vocab_size)
        student, teacher = read_student(start, stop), read_teacher(start, stop)
        if student.shape[0] != teacher.shape[0]:
            raise SemalignError(
                f"bases rows {start}:{stop} differ in count (student {student.shape[0]}, teacher "
                f"{teacher.shape[0]}); "
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


def decompose_recompose_naive(
    h: torch.Tensor, teacher_bases: torch.Tensor, student_bases: torch.Tensor
) -> torch.Tensor:
    """The same map computed literally: coefficients a `[tokens, vocab]`, then a S_S. For tests and
    benches."""
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


def random_control_cosine(count: int, dim: int) -> float:
    """Closed form of the random control's reconstruction cosine: √(n / (n + d − 1)) for n random unit
    vectors in
    R^d, from E[hᵀ R Rᵀ h] = n/d and E‖R Rᵀ h‖² = n/d + n(n − 1)/d² for a unit h (the ratio of expectations,
    exact as n·d grows). n = d gives 0.71; n = 100·d gives 0.995."""
    return (count / (count + dim - 1)) ** 0.5


def isotropy(self_map: torch.Tensor) -> float:
    """λ_min / λ_max of a symmetric S Sᵀ `[d, d]`: 1 when the bases spread evenly over every direction
    (then decompose→recompose returns any vector's direction unchanged), 0 when a direction is missing."""
    eigenvalues = torch.linalg.eigvalsh(self_map.double())
    return float(eigenvalues[0].clamp(min=0) / eigenvalues[-1])


def fold_maps(
    stores: Mapping[str, Store], vocab: VocabAlignment, config: AlignConfig
) -> dict[str, torch.Tensor]:
    """Every map `align` applies, float64, from the bases stores {"teacher", "student"} (`[vocab, d]` rows)
    over the tokens `vocab` pairs by string: "semantic" M = S_S S_Tᵀ of `config.bases` (teacher row of a
    token with the student row of the same token); "self_<role>_<variant>" S Sᵀ; "random_<role>" R Rᵀ for
    as many random unit vectors as shared tokens and "random_<role>_<n>" for n in `config.control_counts`."""
    variants = stores["student"].manifest["variants"]
    if config.bases not in variants:
        raise SemalignError(
            f"align.bases {config.bases!r} was not computed; add it to bases.variants {variants}"
        )
    index = {
        role: None if vocab.identical else getattr(vocab, f"{role}_index") for role in ("teacher", "student")
    }

    def reader(role: str, variant: str) -> RowReader:
        return shared_row_reader(stores[role], variant, index[role])

    rows = vocab.kept
    maps = {
        "semantic": folded_map(
            reader("student", config.bases), reader("teacher", config.bases), rows, config.chunk_rows
        )
    }
    for role, store in stores.items():
        for variant in variants:
            maps[f"self_{role}_{variant}"] = folded_map(
                reader(role, variant), reader(role, variant), rows, config.chunk_rows
            )
        maps[f"random_{role}"] = random_self_map(
            rows, store.manifest["d_model"], config.control_seed, config.chunk_rows
        )
        for count in config.control_counts:
            maps[f"random_{role}_{count}"] = random_self_map(
                count, store.manifest["d_model"], config.control_seed, config.chunk_rows
            )
    return maps
