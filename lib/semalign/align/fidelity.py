"""Is decomposition faithful? (paper Fig. 2) and how close are targets to the student before training.

Fidelity of a model's bases at layer ℓ: the mean over real tokens of cos(h, S Sᵀ h / ‖h‖), with S Sᵀ
from `semalign.align.alignment.folded_map` (same bases on both sides). The paper reports it high for
output-side and near zero for input-side bases; the random-basis control (as many random unit vectors
as the vocabulary) says how much of "high" any large set of directions would give.

Cross-model: for each student layer, every latent map (`semalign.align.latent_maps`) is fitted on the first
examples of the alignment split and measured on the others, so no number comes from tokens a map was fitted
on.
"""

from __future__ import annotations

import torch

from semalign.align.alignment import reconstruction_cosine, row_cosine
from semalign.align.latent_maps import LatentMap, fit_all
from semalign.errors import SemalignError
from semalign.student.objectives import interface_similarity


def layer_fidelity(
    states: dict[int, torch.Tensor], self_maps: dict[str, torch.Tensor]
) -> dict[str, list[float]]:
    """Per named self map, the mean reconstruction cosine of every layer's states `[tokens, d]`, in layer
    order."""
    layers = sorted(states)
    return {
        name: [float(reconstruction_cosine(states[ell], m).mean()) for ell in layers]
        for name, m in self_maps.items()
    }


def mean_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean row cosine of `[tokens, d]` tensors (float64 inside)."""
    return float(row_cosine(x, y).mean())


def fit_examples(num_examples: int, fit_fraction: float) -> int:
    """How many leading examples of the alignment split fit the maps: round(fraction·N), at least 1, at most
    N − 1."""
    if num_examples < 2:
        raise SemalignError(
            f"the alignment split has {num_examples} example(s); fitting and measuring maps needs "
            "at least 2 (raise data.tasks.<task>.alignment)"
        )
    return min(max(round(fit_fraction * num_examples), 1), num_examples - 1)


def compare_maps(
    teacher: torch.Tensor,
    student: torch.Tensor,
    mask: torch.Tensor,
    fitted: int,
    folded: torch.Tensor,
    ridge: float,
    seed: int = 0,
) -> tuple[dict[str, LatentMap], dict[str, dict[str, float]]]:
    """Fit every latent map on examples [0, fitted) and measure it on the rest.

    teacher `[N, T, d_teacher]` (the interface quantity), student `[N, T, d_student]` (the student's own
    Δh_k),
    mask `[N, T]` real tokens. Returns (maps, {map: {"cosine", "relation"}} on the held-out examples).
    """
    mask = mask.bool()
    fit_mask = mask[:fitted]
    maps = fit_all(teacher[:fitted][fit_mask], student[:fitted][fit_mask], folded, ridge, seed)
    held_teacher, held_student, held_mask = teacher[fitted:], student[fitted:], mask[fitted:]
    similarity = {}
    for name, latent_map in maps.items():
        mapped = torch.zeros(*held_mask.shape, student.shape[-1])  # padding is masked out of the similarity
        mapped[held_mask] = latent_map(held_teacher[held_mask])  # real tokens only: ~1/3 of [N, T] here
        similarity[name] = interface_similarity(held_student, mapped, held_mask)
    return maps, similarity


def curve_rows(series: dict[str, list[float]], first_layer: int = 0) -> list[dict]:
    """Wide rows {"layer": ℓ, <series>: value, ...} for a DVC plot with several y fields."""
    length = len(next(iter(series.values())))
    return [
        {"layer": first_layer + i, **{name: values[i] for name, values in series.items()}}
        for i in range(length)
    ]
