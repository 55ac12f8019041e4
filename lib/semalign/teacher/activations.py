"""Residual-stream capture and the teacher's next-token distribution, for one forward pass.

`output_hidden_states=True` is not used on purpose: in transformers its last entry is the final-normed
state, not the raw residual h_L, so the residual contribution h_L − h_{L−1} of the last layer would be
wrong. Forward hooks on the embedding and on each decoder layer record the raw h_0 … h_L instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from semalign.errors import SemalignError
from semalign.models import decoder_layers
from semalign.progress import progress


class ResidualRecorder:
    """Context manager recording the residual stream h_ℓ, `[batch, tokens, d_model]`, for chosen layers.

    Layer 0 is the embedding output; layer ℓ ≥ 1 is the output of decoder layer ℓ (before the final norm).
    With `detach=False` the recorded tensors keep their graph (for losses on a student's layer).
    """

    def __init__(self, model: PreTrainedModel, layers: Iterable[int], detach: bool = True):
        self.blocks = decoder_layers(model)
        self.embedding = model.get_input_embeddings()
        self.layers = sorted(set(layers))
        bad = [ell for ell in self.layers if not 0 <= ell <= len(self.blocks)]
        if bad:
            raise SemalignError(
                f"layer index {bad} out of range: this model has layers 0..{len(self.blocks)} "
                "(0 = embeddings); fix the layer list in params.yaml"
            )
        self.detach = detach
        self.states: dict[int, torch.Tensor] = {}
        self._hooks = []

    def _record(self, ell: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.states[ell] = hidden.detach() if self.detach else hidden

        return hook

    def __enter__(self) -> ResidualRecorder:
        for ell in self.layers:
            module = self.embedding if ell == 0 else self.blocks[ell - 1]
            self._hooks.append(module.register_forward_hook(self._record(ell)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


@dataclass
class TeacherBatch:
    """What the cache keeps of one teacher forward pass over a batch.

    hidden: layer -> `[batch, tokens, d_teacher]` residual states h_ℓ.
    topk_logprobs, topk_ids: `[batch, tokens, k]` log-probabilities of the k most likely next tokens.
    rest_logmass: `[batch, tokens]` log of the probability mass outside the top k (the KL's remainder bucket).
    """

    hidden: dict[int, torch.Tensor]
    topk_logprobs: torch.Tensor
    topk_ids: torch.Tensor
    rest_logmass: torch.Tensor


def topk_with_rest(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k log-probabilities `[..., k]`, their ids `[..., k]` and the log remaining mass `[...]`.

    The remainder is log(1 − Σ p_topk), computed as log(−expm1(logsumexp(topk))) for accuracy when the
    top k hold almost all of the mass; it is clamped at the smallest float32 so it stays finite.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top_logprobs, top_ids = logprobs.topk(k, dim=-1)
    covered = torch.logsumexp(top_logprobs, dim=-1).clamp(max=0.0)
    rest = torch.log((-torch.expm1(covered)).clamp(min=torch.finfo(torch.float32).tiny))
    return top_logprobs, top_ids.to(torch.int32), rest


@torch.inference_mode()
def teacher_forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Iterable[int],
    top_k: int,
) -> TeacherBatch:
    """Run the teacher once over `input_ids` `[batch, tokens]` and keep the chosen residual states and
    the top-k next-token distribution at every position."""
    with ResidualRecorder(model, layers) as recorder:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    top_logprobs, top_ids, rest = topk_with_rest(logits, top_k)
    return TeacherBatch(recorder.states, top_logprobs, top_ids, rest)


@torch.no_grad()
def residual_states(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Iterable[int],
    batch_size: int = 4,
    desc: str = "states",
) -> dict[int, torch.Tensor]:
    """Residual states h_ℓ on real tokens only: layer -> `[tokens, d_model]` float32, tokens in example
    order (the order of `states[attention_mask.bool()]` for a `[N, T, d]` array).

    input_ids, attention_mask: `[N, T]`, right-padded; each batch is cut to its longest real example.
    """
    collected: dict[int, list[torch.Tensor]] = {}
    starts = range(0, len(input_ids), batch_size)
    for start in progress(starts, desc=desc, total=len(starts), unit="batch"):
        mask = attention_mask[start : start + batch_size]
        used = int(mask.sum(dim=1).max())
        mask = mask[:, :used].to(model.device)
        with ResidualRecorder(model, layers) as recorder:
            model(
                input_ids=input_ids[start : start + batch_size, :used].to(model.device),
                attention_mask=mask,
                use_cache=False,
                logits_to_keep=1,  # the states are what is read: the head runs on one position, not all
            )
        for ell, h in recorder.states.items():
            collected.setdefault(ell, []).append(h[mask.bool()].float().cpu())
    return {ell: torch.cat(parts) for ell, parts in collected.items()}
