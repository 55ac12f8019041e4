"""Representation similarity between teacher and student layers: linear CKA (Kornblith et al. 2019).

For centered features X `[n, d1]`, Y `[n, d2]` over the same n tokens,
    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F),
which is 1 for identical inputs and invariant to rotations and isotropic scaling of either side. The
debiased variant replaces each ‖·‖² by the unbiased HSIC estimator (Song et al. 2012), in the
feature-space form of Kornblith's `feature_space_linear_cka(debiased=True)`, so it never needs an n×n
Gram matrix either. Everything is float64.

`cka_matrix` compares every teacher layer with every student layer. The cross term ‖YᵀX‖²_F equals
⟨XXᵀ, YYᵀ⟩, and with ~25×29 layer pairs of width ~1000 and a few thousand tokens the Gram side is
several times cheaper: each layer's Gram rows are formed once per block of `block_rows` tokens
(`[block_rows, n]`, never the whole n×n), and all pairs come out of one product per block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from semalign.config import at_least
from semalign.errors import SemalignError
from semalign.progress import progress


@dataclass(frozen=True)
class CkaConfig:
    """`cka` section: tokens compared per layer pair (evenly spaced over the split's real tokens; the
    matrix costs O(tokens² · Σ widths)); whether to use the debiased (unbiased HSIC) estimator."""

    max_tokens: int = at_least(4096, 4)
    debiased: bool = False

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 4:
            raise SemalignError(f"cka.max_tokens is {self.max_tokens!r}; use an integer >= 4 (e.g. 4096)")


@dataclass(frozen=True)
class _Layer:
    """One layer's centered float64 features and the per-layer terms of the CKA formulas."""

    x: torch.Tensor  # [n, d] centered
    row_sq: torch.Tensor  # [n] ‖x_i‖²
    self_dot: float  # ‖XᵀX‖²_F


def _prepare(h: torch.Tensor) -> _Layer:
    if h.ndim != 2:
        raise SemalignError(
            f"CKA takes features [tokens, d]; got shape {tuple(h.shape)}: flatten the batch first"
        )
    x = h.double()
    x = x - x.mean(dim=0, keepdim=True)
    return _Layer(x, (x * x).sum(dim=1), float((x.T @ x).square().sum()))


def _check_rows(n_x: int, n_y: int, debiased: bool) -> None:
    if n_x != n_y:
        raise SemalignError(f"CKA needs the same tokens on both sides; got {n_x} and {n_y} rows")
    if n_x < (4 if debiased else 2):
        raise SemalignError(f"CKA over {n_x} tokens is undefined; pass at least {4 if debiased else 2}")


def _unbiased(dot: float, row_sq_x: torch.Tensor, row_sq_y: torch.Tensor, n: int) -> float:
    """Kornblith's debiasing of a feature-space dot product ‖YᵀX‖²_F into the unbiased HSIC (× n(n−3))."""
    return (
        dot
        - n / (n - 2) * float(row_sq_x @ row_sq_y)
        + float(row_sq_x.sum()) * float(row_sq_y.sum()) / ((n - 1) * (n - 2))
    )


def _cka(cross: float, a: _Layer, b: _Layer, debiased: bool) -> float:
    n = a.x.shape[0]
    if debiased:
        num = _unbiased(cross, a.row_sq, b.row_sq, n)
        den_sq = _unbiased(a.self_dot, a.row_sq, a.row_sq, n) * _unbiased(b.self_dot, b.row_sq, b.row_sq, n)
    else:
        num, den_sq = cross, a.self_dot * b.self_dot
    if den_sq <= 0:
        return float("nan")  # a constant layer (zero variance) has no defined similarity
    return num / den_sq**0.5


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear CKA of x `[n, d1]` and y `[n, d2]` (rows = the same tokens), float64, feature-space form."""
    _check_rows(x.shape[0], y.shape[0], debiased)
    a, b = _prepare(x), _prepare(y)
    return _cka(float((b.x.T @ a.x).square().sum()), a, b, debiased)


def _gram_products(xs: Sequence[_Layer], ys: Sequence[_Layer], block_rows: int, desc: str) -> torch.Tensor:
    """⟨X_i X_iᵀ, Y_j Y_jᵀ⟩ = ‖Y_jᵀX_i‖²_F for all pairs, `[len(xs), len(ys)]`, block by block of Gram
    rows."""
    n = xs[0].x.shape[0]
    total = torch.zeros(len(xs), len(ys), dtype=torch.float64)
    starts = range(0, n, block_rows)
    for start in progress(starts, desc=desc, total=len(starts), unit="block"):
        stop = min(start + block_rows, n)
        grams_x = torch.stack([layer.x[start:stop] @ layer.x.T for layer in xs]).flatten(1)
        grams_y = torch.stack([layer.x[start:stop] @ layer.x.T for layer in ys]).flatten(1)
        total += grams_x @ grams_y.T
    return total


def cka_matrix(
    teacher_states: Sequence[torch.Tensor],
    student_states: Sequence[torch.Tensor],
    debiased: bool = False,
    block_rows: int = 256,
    desc: str = "cka",
) -> torch.Tensor:
    """CKA of every teacher layer with every student layer: `[len(teacher_states), len(student_states)]`
    float64, from per-layer features `[n, d_teacher]` / `[n, d_student]` over the same n tokens.

    Each layer is centered and its self terms computed once; memory is the float64 features plus
    (layers) × block_rows × n for the Gram rows of one block.
    """
    if not teacher_states or not student_states:
        raise SemalignError("cka_matrix needs at least one teacher and one student layer")
    rows = {h.shape[0] for h in [*teacher_states, *student_states]}
    if len(rows) != 1:
        raise SemalignError(f"CKA needs the same tokens for every layer; got row counts {sorted(rows)}")
    n = rows.pop()
    _check_rows(n, n, debiased)
    xs, ys = [_prepare(h) for h in teacher_states], [_prepare(h) for h in student_states]
    cross = _gram_products(xs, ys, block_rows, desc)
    return torch.tensor(
        [[_cka(float(cross[i, j]), a, b, debiased) for j, b in enumerate(ys)] for i, a in enumerate(xs)],
        dtype=torch.float64,
    )


def layer_contributions(states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What each layer writes into the residual stream, from states h_0..h_L `[tokens, d]`: the embeddings
    h_0 for layer 0, Δh_ℓ = h_ℓ − h_{ℓ−1} for ℓ ≥ 1. CKA between raw h is ≈ 1 for almost every layer pair,
    because a few massive-activation dimensions, carried unchanged by the residual stream, dominate every
    h_ℓ; each Δh holds only what its own layer adds."""
    if not states:
        raise SemalignError("layer_contributions needs at least the embeddings h_0")
    return [states[0], *(after - before for before, after in zip(states, states[1:]))]


def even_rows(count: int, limit: int) -> torch.Tensor:
    """Indices of at most `limit` rows spread evenly over 0..count−1 (all of them when count ≤ limit)."""
    if count <= limit:
        return torch.arange(count)
    return torch.linspace(0, count - 1, limit, dtype=torch.float64).round().long()


def best_matches(matrix: torch.Tensor, depth: Sequence[int]) -> dict:
    """Per student layer k ≥ 1 of a `[L_T+1, L_S+1]` matrix: the teacher layer with the highest CKA, that
    CKA, and its offset from the §4.1 depth map ℓ_k (`depth[k−1]`, `semalign.align.pairing.depth_map`)."""
    if matrix.shape[1] != len(depth) + 1:
        raise SemalignError(
            f"matrix has {matrix.shape[1]} student columns but the depth map {len(depth)} layers (+ 0)"
        )
    scores, layers = matrix[:, 1:].max(dim=0)
    best = [int(t) for t in layers]
    return {
        "best_teacher_layer": best,
        "best_cka": [round(float(s), 4) for s in scores],
        "offset_from_depth_map": [t - ell for t, ell in zip(best, depth)],
        "mean_abs_offset": round(sum(abs(t - ell) for t, ell in zip(best, depth)) / len(depth), 3),
        "mean_cka_at_depth_map": round(
            float(sum(matrix[ell, k] for k, ell in enumerate(depth, 1))) / len(depth), 4
        ),
        "mean_cka": round(float(matrix.mean()), 4),
    }


def plot_heatmaps(
    matrices: dict[str, torch.Tensor],
    path: str | Path,
    title: str,
    depth: Sequence[int] | None = None,
    columns: int = 2,
) -> None:
    """CKA heatmaps (PNG), one panel per named `[L_T+1, L_S+1]` matrix: student layer on x, teacher layer
    on y, one colour scale 0..1 shared by all panels; the depth map, when given, drawn over each."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = -(-len(matrices) // columns)
    fig = Figure(figsize=(4.2 * columns + 0.8, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    image = None
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        image = ax.imshow(
            matrix.numpy(),
            origin="lower",
            aspect="auto",
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
            interpolation="nearest",
        )
        if depth is not None:
            ax.plot(
                range(1, len(depth) + 1),
                depth,
                color="white",
                linewidth=1,
                marker=".",
                label="§4.1 depth map",
            )
            ax.legend(fontsize="x-small", loc="upper left")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("student layer")
        ax.set_ylabel("teacher layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(matrices) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, label="linear CKA", shrink=0.9)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
