"""Layer attribution (paper §4.1): Layer Gradient × Activation of the supervised objective, one score per
layer.

Objective. Per example, the mean log-probability of its answer tokens (labels != −100, Hugging Face
convention: labels[t] is predicted from position t−1), i.e. minus the example's cross-entropy. A positive
gradient × activation therefore means "this activation raises the probability of the right answer";
the mean rather than the sum keeps long answers from outweighing short ones.

Activation (`target`). Captum's LayerGradientXActivation on all decoder layers at once (one forward and
one backward per batch) gives g_ℓ = ∂objective/∂h_ℓ at every layer output. It is multiplied by
  - "contribution" (default): h_ℓ − h_{ℓ−1}, what layer ℓ itself writes into the residual stream.
    g_ℓ·(h_ℓ − h_{ℓ−1}) is the first-order change of the objective if layer ℓ's update were removed,
    so it ranks layers by what they do. It is also the quantity the v2 objective supervises.
  - "residual": h_ℓ, the paper's literal "layer's activations". Adjacent residual states differ by one
    layer's update, so these scores vary smoothly with depth and track the residual norm (which grows
    with depth) more than any one layer's role: a layer that does nothing scores like its neighbour.

Aggregation. Σ |g ⊙ activation| over real tokens (attention_mask = 1) and channels, averaged over
examples, then normalised across layers to sum to 1. Absolute values per element keep positive and
negative evidence from cancelling; normalising makes teachers of different width comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from transformers import PreTrainedModel

from semalign.config import positive
from semalign.errors import SemalignError
from semalign.models import decoder_layers
from semalign.progress import progress
from semalign.teacher.activations import ResidualRecorder

IGNORE = -100
TARGETS = ("contribution", "residual")


@dataclass(frozen=True)
class AttributeConfig:
    """`attribute` section: examples per forward/backward pass, and what multiplies the gradient
    ("contribution": the layer's own update h_ℓ − h_{ℓ−1}; "residual": h_ℓ as in the paper's text)."""

    batch_size: int = positive(4)
    target: str = "contribution"


@dataclass
class LayerScores:
    """scores: [L] normalised to sum 1, scores[ℓ−1] is layer ℓ; raw: [L] before normalising."""

    scores: list[float]
    raw: list[float]
    aggregation: str
    target: str
    num_examples: int


def answer_logprob(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-example mean log-probability of the supervised tokens, `[batch]`.

    input_ids, attention_mask, labels: [batch, tokens]; every example needs at least one label != −100
    after position 0.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [batch, tokens, vocab]
    targets = labels[:, 1:]
    supervised = targets != IGNORE  # [batch, tokens−1]
    # Only supervised positions go through log_softmax: a full [batch, tokens, vocab] copy is the
    # largest tensor of the pass for a 150k vocabulary.
    picked = logits[:, :-1][supervised].float()  # [answers, vocab]
    logp = torch.log_softmax(picked, dim=-1).gather(-1, targets[supervised][:, None]).squeeze(-1)
    rows = supervised.nonzero()[:, 0]
    total = torch.zeros(len(input_ids), dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)
    return total / supervised.sum(dim=1)


def _check_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, batch_size: int, target: str
) -> None:
    if target not in TARGETS:
        raise SemalignError(
            f"attribution target {target!r} is unknown; use one of {list(TARGETS)} in params.yaml"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SemalignError(
            f"attribution batch_size {batch_size!r} must be a positive integer; fix params.yaml"
        )
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape or labels.shape != input_ids.shape:
        raise SemalignError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and labels "
            f"{tuple(labels.shape)} must all be [batch, tokens]; build them with the same tokenizer call"
        )
    empty = (labels[:, 1:] == IGNORE).all(dim=1).nonzero()[:, 0].tolist()
    if empty:
        raise SemalignError(
            f"examples {empty} have no supervised answer token (all labels are -100); check the answer "
            "masking and that max_length does not truncate the answers away"
        )


def layer_scores(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    target: str = "contribution",
) -> LayerScores:
    """Score every decoder layer ℓ = 1..L of `model` (in eval mode) on the supervised examples.

    input_ids, attention_mask, labels: [examples, tokens], right-padded (positions are not shifted for
    left padding); labels are −100 except on answer tokens. See the module docstring for the objective,
    `target` and the aggregation.
    """
    # Imported here: the seeking and laten stages use only this module's plots, and captum costs a second.
    from captum.attr import LayerGradientXActivation

    _check_inputs(input_ids, attention_mask, labels, batch_size, target)
    num_layers = len(decoder_layers(model))
    # multiply_by_inputs=False makes Captum return the gradients g_ℓ themselves; the product with the
    # chosen activation is taken below so that both targets share one backward pass.
    gradients = LayerGradientXActivation(
        lambda ids, mask, lab: answer_logprob(model, ids, mask, lab),
        list(decoder_layers(model)),
        multiply_by_inputs=False,
    )
    device = model.device
    totals = torch.zeros(num_layers, dtype=torch.float64)
    # Batches of similar length, each cut to its longest real example (right padding keeps positions),
    # so no forward or backward work is spent on padding; the per-example mean is order-independent.
    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    starts = range(0, len(input_ids), batch_size)
    for start in progress(starts, desc="attribute: batches", total=len(starts), unit="batch"):
        rows = order[start : start + batch_size]
        used = int(lengths[rows].max())
        ids, mask, lab = (t[rows, :used].to(device) for t in (input_ids, attention_mask, labels))
        with ResidualRecorder(model, range(num_layers + 1)) as recorder:
            grads = gradients.attribute(
                ids, additional_forward_args=(mask, lab), attribute_to_layer_input=False
            )
        real = mask.bool()
        for ell in range(1, num_layers + 1):
            # A decoder layer returning a tuple gets one gradient per element; the hidden state is first.
            grad = grads[ell - 1][0] if isinstance(grads[ell - 1], tuple) else grads[ell - 1]
            h = recorder.states[ell]
            act = h - recorder.states[ell - 1] if target == "contribution" else h
            # Selecting real tokens (rather than multiplying by the mask) keeps a non-finite value in a
            # fully masked pad row out of the sum.
            totals[ell - 1] += (grad * act)[real].abs().sum().double().cpu()
    raw = totals / len(input_ids)
    if not torch.isfinite(raw).all() or raw.sum() <= 0:
        raise SemalignError(
            f"layer attributions {raw.tolist()} cannot be normalised; check that the model is finite and the "
            "labels mark answer tokens"
        )
    return LayerScores(
        scores=(raw / raw.sum()).tolist(),
        raw=raw.tolist(),
        aggregation=_aggregation(target),
        target=target,
        num_examples=len(input_ids),
    )


def _aggregation(target: str) -> str:
    act = "(h_l - h_{l-1})" if target == "contribution" else "h_l"
    return (
        f"sum over real tokens and channels of |d mean log p(answer) / d h_l * {act}|, "
        "mean over examples, normalised to sum 1 across layers"
    )


def scores_to_plot_rows(scores: list[float]) -> list[dict]:
    """[{"layer": ℓ, "score": s}] with ℓ from 1, for a DVC plot data file."""
    return [{"layer": ell, "score": float(s)} for ell, s in enumerate(scores, start=1)]


def plot_layer_scores(scores: list[float], path: str | Path, title: str) -> None:
    """Bar plot (PNG) of per-layer scores, layer on x."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A bare Figure renders with Agg and touches no global pyplot state (safe in tests and workers).
    fig = Figure(figsize=(max(4.0, 0.25 * len(scores)), 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(1, len(scores) + 1), scores, color="tab:blue")
    ax.set_xlabel("layer")
    ax.set_ylabel("attribution score")
    ax.set_title(title)
    fig.savefig(path, dpi=120)
