"""Teacher→student latent maps: the paper's semantic map and two maps fitted on data, as one type.

Every map sends a teacher vector `[d_teacher]` to student space `[d_student]` linearly:
    semantic     h̃ = M h / ‖h‖ with M = S_S S_Tᵀ (eq. 1–2 folded; `semalign.align.alignment.folded_map`)
    ridge        h̃ = W h, W = argmin ‖X Wᵀ − Y‖² + α‖W‖²  (least squares, ridge α = strength · tr(XᵀX) /
d_teacher)
    procrustes   h̃ = s Q P h: P projects onto the top-d_student principal directions of X (fixed: chosen from
                 the teacher side alone), then the best orthogonal Q and isotropic scale s onto Y
    random       h̃ = G h / ‖h‖ with a Gaussian G: the control a map without information gives
X `[tokens, d_teacher]` are teacher quantities and Y `[tokens, d_student]` the student's own quantities at the
paired layer, on fit tokens only. Fitted maps are linear (no intercept), like the semantic one, so zero
(padding) rows stay zero and a fitted map can stand wherever the semantic map does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semalign.align.alignment import LATENT_MAPS, decompose_recompose
from semalign.errors import SemalignError


@dataclass(frozen=True)
class LatentMap:
    """h̃ = matrix @ h, after scaling h to unit norm when `unit_input`; matrix `[d_student, d_teacher]`
    float64."""

    matrix: torch.Tensor
    unit_input: bool

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """`[tokens, d_teacher]` -> `[tokens, d_student]` float32; zero rows map to zero."""
        if self.unit_input:
            return decompose_recompose(h, self.matrix).float()
        return (h.double() @ self.matrix.T).float()


def semantic_map(folded: torch.Tensor) -> LatentMap:
    """The paper's map from the folded M = S_S S_Tᵀ `[d_student, d_teacher]`."""
    return LatentMap(folded.double(), unit_input=True)


def random_map(d_student: int, d_teacher: int, seed: int = 0) -> LatentMap:
    """A Gaussian `[d_student, d_teacher]` map: what cosine a map with no information about either model
    gets."""
    generator = torch.Generator().manual_seed(seed)
    return LatentMap(
        torch.randn(d_student, d_teacher, generator=generator, dtype=torch.float64), unit_input=True
    )


def _check_fit_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise SemalignError(
            f"a map is fitted on paired rows: got teacher {tuple(x.shape)} and student "
            f"{tuple(y.shape)}; both must be [tokens, d] with the same tokens"
        )
    if x.shape[0] < 2:
        raise SemalignError(
            f"fitting a map needs at least 2 tokens, got {x.shape[0]}; raise the task's "
            "alignment split size or align.fit_fraction"
        )


def fit_ridge(x: torch.Tensor, y: torch.Tensor, strength: float) -> LatentMap:
    """Ridge regression of y `[tokens, d_student]` on x `[tokens, d_teacher]`, in float64.

    W = Yᵀ X (XᵀX + α I)⁻¹ with α = strength · tr(XᵀX) / d_teacher, so `strength` is free of the states' scale
    (strength 0 is ordinary least squares and needs at least d_teacher independent tokens).
    """
    _check_fit_data(x, y)
    if strength < 0:
        raise SemalignError(
            f"align.ridge {strength} is negative; use 0 (least squares) or a positive strength"
        )
    x, y = x.double(), y.double()
    gram = x.T @ x
    alpha = strength * gram.diagonal().sum() / gram.shape[0]
    regularised = gram + alpha * torch.eye(gram.shape[0], dtype=torch.float64)
    try:
        weights = torch.linalg.solve(regularised, x.T @ y)  # [d_teacher, d_student]
    except torch.linalg.LinAlgError as error:
        raise SemalignError(
            f"ridge fit is singular ({x.shape[0]} tokens for width {x.shape[1]}); set align.ridge above 0"
        ) from error
    return LatentMap(weights.T.contiguous(), unit_input=False)


def fit_procrustes(x: torch.Tensor, y: torch.Tensor) -> LatentMap:
    """Scaled orthogonal Procrustes after a fixed projection to the student's width, in float64.

    P `[d_student, d_teacher]`: the top-d_student principal directions of x (eigenvectors of the centered
    XᵀX, a teacher-side PCA; with fewer tokens than d_student, eigenvectors of zero variance complete P). With
    Z = X Pᵀ: Q = U Vᵀ from Zᵀ Y = U Σ Vᵀ (Q `[d_student, d_student]` orthogonal) and s = tr Σ / ‖Z‖²_F,
    the minimisers of ‖s Z Q − Y‖_F.
    """
    _check_fit_data(x, y)
    x, y = x.double(), y.double()
    d_student, d_teacher = y.shape[1], x.shape[1]
    if d_student > d_teacher:
        raise SemalignError(
            f"procrustes projects the teacher width {d_teacher} down to the student width "
            f"{d_student}; it needs a teacher at least as wide as the student"
        )
    centered = x - x.mean(dim=0)
    _, eigenvectors = torch.linalg.eigh(centered.T @ centered)  # ascending variance, [d_teacher, d_teacher]
    projection = (
        eigenvectors[:, -d_student:].flip(1).T.contiguous()
    )  # [d_student, d_teacher], orthonormal rows
    z = x @ projection.T
    u, sigma, v_t = torch.linalg.svd(z.T @ y)
    rotation = u @ v_t
    scale = sigma.sum() / (z * z).sum().clamp(min=torch.finfo(torch.float64).tiny)
    return LatentMap((scale * rotation.T @ projection).contiguous(), unit_input=False)


def fit_map(name: str, x: torch.Tensor, y: torch.Tensor, folded: torch.Tensor, ridge: float) -> LatentMap:
    """The map `name` (one of LATENT_MAPS) for one paired layer; `folded` serves `semantic`, x / y the fitted
    ones."""
    if name == "semantic":
        return semantic_map(folded)
    if name == "ridge":
        return fit_ridge(x, y, ridge)
    if name == "procrustes":
        return fit_procrustes(x, y)
    raise SemalignError(f"latent map {name!r} is unknown; use one of {LATENT_MAPS}")


def fit_all(
    x: torch.Tensor, y: torch.Tensor, folded: torch.Tensor, ridge: float, seed: int = 0
) -> dict[str, LatentMap]:
    """Every map of LATENT_MAPS fitted on x `[tokens, d_teacher]` -> y `[tokens, d_student]`, and the random
    control."""
    maps = {name: fit_map(name, x, y, folded, ridge) for name in LATENT_MAPS}
    maps["random"] = random_map(folded.shape[0], folded.shape[1], seed)
    return maps
