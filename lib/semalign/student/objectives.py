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


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """`[P]`: the positions t, in any row of `labels` `[B, T]`, whose next token is supervised: the only
    logits cross_entropy_loss and output_cosine_loss read (a forward's `logits_to_keep`)."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)


def kept_pairs(
    logits: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits computed at `kept` positions only (`[B, P, V]`) and the labels `[B, T]`, as the pair these
    losses read: one unused position appended to the logits and one ignored column before the labels
    `[B, P + 1]`, so that logits[:, i] meets the label of position kept[i] + 1, as in the full pair."""
    logits = torch.cat([logits, logits[:, :1]], dim=1)
    return logits, torch.cat([torch.full_like(labels[:, :1], IGNORE), labels[:, kept + 1]], dim=1)


def relation_matrix(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the cosine matrix of its centered unit token vectors: `[batch, tokens, tokens]`.

    u_i = x_i / ‖x_i‖; ū = mean of u_i over the sequence's masked tokens; û_i = (u_i − ū) / ‖u_i − ū‖;
    R_ij = û_i · û_j, zero where i or j is masked. Normalising every token first makes R blind to per-token
    scale, so a target built from unit rows (M Δh / ‖Δh‖) and a raw Δh go through the same steps.
    """
    m = mask.to(x.dtype)[..., None]  # [B, T, 1]
    unit = x / x.norm(dim=-1, keepdim=True).clamp(min=EPS)
    count = m.sum(dim=1, keepdim=True).clamp(min=1.0)
    centered = (unit - (unit * m).sum(dim=1, keepdim=True) / count) * m
    centered = centered / centered.norm(dim=-1, keepdim=True).clamp(min=EPS)
    return centered @ centered.transpose(1, 2)


def relation_geometry_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """v2 layer term: centered token-token relation geometry of h against that of the target.

        L = mean over sequences b of  Σ_ij M_bij (R(h)_bij − R(target)_bij)² / Σ_ij M_bij,   M_bij = m_bi m_bj

    with R from `relation_matrix`, applied identically to both sides: h = the teacher's own Δh against the
    target M Δh / ‖Δh‖ with M = I gives L = 0 and a zero gradient. Invariant to rotating either input (R uses
    only inner products) and to scaling any token of either (unit rows first); h and target may differ in
    width, so it compares geometry, not coordinates.
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

    logits: `[B, T, vocab]` of the model; topk_logprobs, topk_ids: `[B, T, k]` from the cache, ids in the
    model's vocabulary (−1: a teacher token the model lacks, whose mass joins the rest bucket; see
    semalign.teacher.bases.VocabAlignment); rest_logmass: `[B, T]` log of the teacher's mass outside them.
    The model's rest bucket is 1 − Σ p_model over the present top-k ids. This is the exact KL between both
    distributions coarsened to those outcomes; by the log-sum inequality it is at most the full-vocabulary
    KL, and equal to it with k = vocab.
    """
    present = topk_ids >= 0
    model = torch.log_softmax(logits.float(), dim=-1)
    model_top = model.gather(-1, topk_ids.long().clamp(min=0)).masked_fill(~present, -torch.inf)
    model_rest = log_rest(model_top)
    teacher_top = topk_logprobs.float().masked_fill(~present, -torch.inf)
    # logsumexp over [rest, -inf, ...] is rest exactly: a fully shared vocabulary keeps the cached bucket
    absent = topk_logprobs.float().masked_fill(present, -torch.inf)
    teacher_rest = torch.logsumexp(torch.cat([rest_logmass.float()[..., None], absent], dim=-1), dim=-1)
    top_terms = torch.where(present, teacher_top.exp() * (teacher_top - model_top), 0.0)
    return top_terms.sum(-1) + teacher_rest.exp() * (teacher_rest - model_rest)


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


def kd_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    rest_logmass: torch.Tensor,
    mask: torch.Tensor,
    kd_weight: float,
) -> torch.Tensor:
    """kd output term (torchtune's knowledge_distillation recipe): (1 − kd_weight) · `cross_entropy_loss`
    on the answer tokens + kd_weight · `topk_kl_loss` (KL(teacher ‖ student) over the teacher's top-k and the
    rest) over `mask`'s positions. Shapes as `topk_kl`; labels `[B, T]`. kd_weight 0: the sft term exactly."""
    kl = topk_kl_loss(logits, topk_logprobs, topk_ids, rest_logmass, mask)
    return (1.0 - kd_weight) * cross_entropy_loss(logits, labels) + kd_weight * kl


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
