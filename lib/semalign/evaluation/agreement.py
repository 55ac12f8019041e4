"""Teacher agreement: how close a variant's next-token distribution is to the teacher's, on held-out text.

On the agreement split (read by no attribution, alignment or training step) the cache stores the teacher's
top-k next-token log-probabilities and the log mass of the rest. For each example and position the variant's
full distribution is coarsened the same way (the teacher's top-k tokens + one rest bucket), and
KL(teacher ‖ variant) over those k + 1 outcomes is exact given what is stored (`topk_kl`; at most the
full-vocabulary KL). Top-1 agreement: the variant's argmax over the whole vocabulary is the teacher's most
likely token.

Per example, both are averaged over its positions: "all" = every real token (the distillation view, the
headline), "answer" = the positions predicting a target token. Summaries and comparisons of the per-example
rows: semalign.evaluation.agreement_summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from semalign.data import Encoded, data_fingerprint
from semalign.errors import SemalignError
from semalign.evaluation.agreement_summary import MEASURES, POSITIONS
from semalign.progress import progress
from semalign.store import Store
from semalign.student.objectives import next_token_positions, topk_kl

if TYPE_CHECKING:
    from semalign.teacher.bases import VocabAlignment

TOPK = ("topk_logprobs", "topk_ids", "rest_logmass")


@dataclass(frozen=True)
class AgreementConfig:
    """`agree` section. batch_size: examples per forward pass (the logits of a batch, `[batch, tokens,
    vocab]` float32, are what bounds memory)."""

    batch_size: int = 4

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SemalignError(f"agree.batch_size is {self.batch_size!r}; use an integer >= 1")


def check_cache(cache: Store, encoded: Encoded) -> None:
    """Refuse a teacher cache made from other token tensors than `encoded` or without the top-k arrays."""
    missing = [name for name in TOPK if name not in cache.arrays]
    if missing:
        raise SemalignError(
            f"teacher cache {cache.location} has no {missing}; rerun `dvc repro cache@<task>`"
        )
    if cache.manifest.get("data_fingerprint") != data_fingerprint(encoded.tensors()):
        raise SemalignError(
            f"teacher cache {cache.location} was made from other token data than this agreement split; "
            "rerun `dvc repro cache@<task>`"
        )


@torch.inference_mode()
def agreement_rows(
    model: PreTrainedModel,
    encoded: Encoded,
    cache: Store,
    item_ids: Sequence[str],
    batch_size: int = 4,
    desc: str = "agree",
    vocab: VocabAlignment | None = None,
) -> list[dict[str, Any]]:
    """Per example of `encoded` (`[N, T]`, right-padded, teacher ids) with the teacher's top-k in `cache`
    (`[N, T, k]`): {item_id, tokens, kl, top1, answer_tokens, answer_kl, answer_top1}, means over its
    positions. `vocab`: the model reads the teacher's tokens as its own ids (None: the teacher itself), and
    top-k tokens it lacks join the rest bucket."""
    check_cache(cache, encoded)
    input_ids = encoded.input_ids
    if vocab is not None:
        input_ids = vocab.student_inputs(input_ids, encoded.attention_mask)
    if len(item_ids) != len(encoded.input_ids):
        raise SemalignError(
            f"{len(item_ids)} item ids for {len(encoded.input_ids)} examples; reload the split"
        )
    rows = []
    starts = range(0, len(encoded.input_ids), batch_size)
    for start in progress(starts, desc=f"{desc}: batches", total=len(starts), unit="batch"):
        stop = min(start + batch_size, len(encoded.input_ids))
        mask = encoded.attention_mask[start:stop]
        used = int(mask.sum(dim=1).max())
        mask = mask[:, :used]
        teacher = {name: cache.read_rows(name, start, stop)[:, :used].to(model.device) for name in TOPK}
        if vocab is not None:
            teacher["topk_ids"] = vocab.student_ids(teacher["topk_ids"])
        logits = model(
            input_ids=input_ids[start:stop, :used].to(model.device),
            attention_mask=mask.to(model.device),
            use_cache=False,
        ).logits
        if int(teacher["topk_ids"].max()) >= logits.shape[-1]:
            raise SemalignError(
                f"the teacher's top-k ids reach {int(teacher['topk_ids'].max())} but this model's vocabulary "
                f"has {logits.shape[-1]} tokens; pass the vocabulary map of `fold` "
                "(data/maps/vocab.safetensors)"
            )
        per_token = {
            "kl": topk_kl(logits, teacher["topk_logprobs"], teacher["topk_ids"], teacher["rest_logmass"]),
            # a teacher top-1 token the model lacks (id −1) is never matched
            "top1": (logits.argmax(-1) == teacher["topk_ids"][..., 0]).float(),
        }
        per_token = {name: values.double().cpu() for name, values in per_token.items()}
        selected = {
            which: next_token_positions(mask, encoded.labels[start:stop, :used], which) for which in POSITIONS
        }
        for row in range(stop - start):
            result = {"item_id": item_ids[start + row]}
            for which, prefix in POSITIONS.items():
                chosen = selected[which][row]
                if not chosen.any():
                    raise SemalignError(
                        f"example {item_ids[start + row]} has no {which} positions; check its tokenisation "
                        "(data.max_length)"
                    )
                result[f"{prefix}tokens"] = int(chosen.sum())
                result |= {f"{prefix}{m}": float(per_token[m][row][chosen].mean()) for m in MEASURES}
            rows.append(result)
    return rows
