"""Training objectives, each a scalar to minimise.

Shapes: h, target `[batch, tokens, d]`; logits `[batch, tokens, vocab]`; labels `[batch, tokens]` with −100
off the supervised tokens (Hugging Face convention: logits at t predict labels at t+1); mask `[batch, tokens]`
selects the positions a term averages over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semalign.errors import SemalignError

IGNORE = -100
EPS = 1e-8


def layer_cosine_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """v1 layer term (paper §4.3): 1 − mean over masked positions of cos(h_t, target_t). Scale-invariant."""
    cos = F.cosine_similarity(h.float(), target.float(), dim=-1, eps=EPS)
    return 1.0 - cos[mask.bool()].mean()


def output_cosine_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """v1 output term (paper §4.3): 1 − mean over supervised positions of cos(z_t, onehot(y_{t+1})).

    cos(z, e_y) = z_y / ‖z‖, so the one-hot matrix is never formed.
    """
    targets = labels[:, 1:]
    supervised = targets != IGNORE
    z = logits[:, :-1][supervised].float()
    cos = z.gather(-1, targets[supervised][:, None]).squeeze(-1) / z.norm(dim=-1).clamp(min=EPS)
    return 1.0 - cos.mean()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised positions (the task-matched SFT baseline)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def relation_matrix(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the cosine-similarity matrix of its centered token vectors: `[batch, tokens, tokens]`.

    x̄ = mean of x_i over the sequence's masked tokens; x̂_i = (x_i − x̄) / ‖x_i − x̄‖; R_ij = x̂_i · x̂_j,
    zero where i or j is masked.
    """
    m = mask.to(x.dtype)[..., None]  # [B, T, 1]
    count = m.sum(dim=1, keepdim=True).clamp(min=1.0)
    centered = (x - (x * m).sum(dim=1, keepdim=True) / count) * m
    unit = centered / centered.norm(dim=-1, keepdim=True).clamp(min=EPS)
    return unit @ unit.transpose(1, 2)


def relation_geometry_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """v2 layer term: centered token-token relation geometry of h against that of the target.

        L = mean over sequences b of  Σ_ij M_bij (R(h)_bij − R(target)_bij)² / Σ_ij M_bij,   M_bij = m_bi m_bj

    with R from `relation_matrix`. Invariant to rotating either input (R uses only inner products), to
    translating a sequence's tokens (centering) and to scaling them (unit rows); h and target may differ
    in width, so it compares geometry, not coordinates.
    """
    mask = mask.bool()
    pairs = (mask[:, :, None] & mask[:, None, :]).float()
    diff = (relation_matrix(h.float(), mask) - relation_matrix(target.float(), mask)) ** 2
    per_sequence = (diff * pairs).sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp(min=1.0)
    return per_sequence[mask.any(dim=1)].mean()


def interface_similarity(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How close h is to its target `[batch, tokens, d]` (widths may differ for "relation"): "cosine" =
    1 − layer_cosine_loss, "relation" = 1 − relation_geometry_loss. Both 1 for a perfect match."""
    with torch.no_grad():
        return {
            "cosine": 1.0 - layer_cosine_loss(h, target, mask).item(),
            "relation": 1.0 - relation_geometry_loss(h, target, mask).item(),
        }


def log_rest(logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(logprobs)) over the last axis, computed as log(−expm1(logsumexp)) and kept finite."""
    covered = torch.logsumexp(logprobs, dim=-1).clamp(max=0.0)
    return torch.log((-torch.expm1(covered)).clamp(min=torch.finfo(logprobs.dtype).tiny))


def topk_kl(
    logits: torch.Tensor, topk_logprobs: torch.Tensor, topk_ids: torch.Tensor, rest_logmass: torch.Tensor
) -> torch.Tensor:
    """KL(teacher ‖ model) per position `[B, T]` over k + 1 outcomes: the teacher's top-k tokens and the rest.

    logits: `[B, T, vocab]` of the model; topk_logprobs, topk_ids: `[B, T, k]` from the cache; rest_logmass:
    `[B, T]` log of the teacher's mass outside them. The model's rest bucket is 1 − Σ_topk p_model. This is
    the exact KL between both distributions coarsened to those k + 1 outcomes; by the log-sum inequality it is
    at most the full-vocabulary KL, and equal to it with k = vocab.
    """
    model = torch.log_softmax(logits.float(), dim=-1)
    model_top = model.gather(-1, topk_ids.long())
    model_rest = log_rest(model_top)
    teacher_top, teacher_rest = topk_logprobs.float(), rest_logmass.float()
    return (teacher_top.exp() * (teacher_top - model_top)).sum(-1) + teacher_rest.exp() * (
        teacher_rest - model_rest
    )


def topk_kl_loss(
    logits: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    rest_logmass: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """v2 output term: `topk_kl` (KL(teacher ‖ student) over the teacher's top-k and the rest), mean over
    masked positions."""
    return topk_kl(logits, topk_logprobs, topk_ids, rest_logmass)[mask.bool()].mean()


def next_token_positions(attention_mask: torch.Tensor, labels: torch.Tensor, which: str) -> torch.Tensor:
    """`[B, T]` bool: the positions whose next-token distribution a KL term compares. "all": every real
    token (the distillation view); "answer": those predicting a target token (position t predicts t + 1)."""
    if which not in ("all", "answer"):
        raise SemalignError(f"KL positions {which!r} must be 'all' or 'answer'")
    if which == "all":
        return attention_mask.bool()
    positions = torch.zeros_like(attention_mask, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE
    return positions
