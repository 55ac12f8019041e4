"""Teacher agreement: how close a variant's next-token distribution is to the teacher's, on held-out text.

On the agreement split (read by no attribution, alignment or training step) the cache stores the teacher's
top-k next-token log-probabilities and the log mass of the rest. For each example and position the variant's
full distribution is coarsened the same way (the teacher's top-k tokens + one rest bucket), and
KL(teacher ‖ variant) over those k + 1 outcomes is exact given what is stored (`topk_kl`; at most the
full-vocabulary KL). Top-1 agreement: the variant's argmax over the whole vocabulary is the teacher's most
likely token.

Per example, both are averaged over its positions: "all" = every real token (the distillation view, the
headline), "answer" = the positions predicting a target token. Summaries average the per-example means
(every example weighs the same), with percentile-bootstrap intervals over examples; a variant is compared
with the student by a paired bootstrap over the same examples, and "KL gap closed" is
(KL_student − KL_variant) / KL_student.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from semalign.data import Encoded, data_fingerprint
from semalign.errors import SemalignError
from semalign.evaluation.metrics import bootstrap_interval, paired_bootstrap
from semalign.progress import progress
from semalign.store import Store
from semalign.student.objectives import next_token_positions, topk_kl

if TYPE_CHECKING:
    from semalign.teacher.bases import VocabAlignment

TOPK = ("topk_logprobs", "topk_ids", "rest_logmass")
# Every variant's KL is paired against each of these that was run: the untouched student, then the
# baselines a transfer must beat (sft, kd).
AGREEMENT_REFERENCES = ("student", "sft", "kd")
POSITIONS = {"all": "", "answer": "answer_"}  # position set -> prefix of its per-example keys
MEASURES = ("kl", "top1")


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


def summarise_agreement(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{n, tokens, answer_tokens} and, per measure (kl, top1, answer_kl, answer_top1), the mean over examples
    with its 95% bootstrap interval (`<measure>_ci_low`, `<measure>_ci_high`)."""
    summary: dict[str, Any] = {
        "n": len(rows),
        "tokens": sum(row["tokens"] for row in rows),
        "answer_tokens": sum(row["answer_tokens"] for row in rows),
    }
    for key in _measure_keys():
        mean, low, high = bootstrap_interval([row[key] for row in rows])
        summary |= {key: mean, f"{key}_ci_low": low, f"{key}_ci_high": high}
    return summary


def compare_agreement(
    student: Sequence[Mapping[str, Any]], variant: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """`variant` against `student` on the same examples: per measure the paired-bootstrap difference
    variant − student (`<measure>_diff`, `_diff_low`, `_diff_high`), and `kl_gap_closed` /
    `answer_kl_gap_closed` = (KL_student − KL_variant) / KL_student with its interval (`_low`, `_high`: the
    difference's interval over the fixed KL_student; all None when KL_student is 0). `student` may be any
    reference variant (sft, kd): the gap closed is then the share of that reference's KL."""
    ids = [row["item_id"] for row in student]
    if [row["item_id"] for row in variant] != ids:
        raise SemalignError(
            "the variant's and the student's agreement rows are not the same examples in the same order; "
            "rerun both agree stages on the current agreement split"
        )
    comparison: dict[str, Any] = {"n": len(ids)}
    for key in _measure_keys():
        diff, low, high = paired_bootstrap([row[key] for row in variant], [row[key] for row in student])
        comparison |= {f"{key}_diff": diff, f"{key}_diff_low": low, f"{key}_diff_high": high}
    for prefix in POSITIONS.values():
        base = sum(row[f"{prefix}kl"] for row in student) / len(student)
        closed = {
            "": -comparison[f"{prefix}kl_diff"],
            "_low": -comparison[f"{prefix}kl_diff_high"],
            "_high": -comparison[f"{prefix}kl_diff_low"],
        }
        for suffix, gained in closed.items():
            comparison[f"{prefix}kl_gap_closed{suffix}"] = gained / base if base > 0 else None
    return comparison


def agreement_table(rows: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """From per-example rows[task][variant]: {task: {variant: summary (+ "vs_<reference>" for each of
    AGREEMENT_REFERENCES other than the variant whose rows exist)}}."""
    table = {}
    for task, by_variant in sorted(rows.items()):
        table[task] = {}
        for variant, variant_rows in sorted(by_variant.items(), key=lambda kv: (kv[0] != "student", kv[0])):
            table[task][variant] = summarise_agreement(variant_rows)
            for base in AGREEMENT_REFERENCES:
                if variant != base and base in by_variant:
                    table[task][variant][f"vs_{base}"] = compare_agreement(by_variant[base], variant_rows)
    return table


def agreement_display(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The agreement table as display tables {"title", "note", "headers", "rows"} of strings (the layout of
    `semalign.evaluation.table.result_tables`), one per task."""
    parts = []
    for task, by_variant in table.items():
        references = [ref for ref in AGREEMENT_REFERENCES[1:] if ref in by_variant]
        rows = []
        for variant, s in by_variant.items():
            vs = s.get("vs_student")
            rows.append(
                [
                    variant,
                    str(s["n"]),
                    f"{s['kl']:.4g} [{s['kl_ci_low']:.4g}, {s['kl_ci_high']:.4g}]",
                    _diff_cell(vs),
                    "—" if vs is None or vs["kl_gap_closed"] is None else f"{vs['kl_gap_closed']:.3f}",
                    f"{s['top1']:.3f} [{s['top1_ci_low']:.3f}, {s['top1_ci_high']:.3f}]",
                    f"{s['answer_kl']:.4g}",
                    f"{s['answer_top1']:.3f}",
                    *(_diff_cell(s.get(f"vs_{ref}")) for ref in references),
                ]
            )
        parts.append(
            {
                "title": f"Teacher agreement, {task} (held-out agreement split)",
                "note": "KL(teacher ‖ variant) per token over the teacher's top-k tokens + the rest, mean "
                "over examples of the mean over every real token [95% bootstrap over examples]; vs student: "
                "paired bootstrap of the difference; gap closed = (KL_student − KL) / KL_student; top-1: the "
                "variant's argmax is the teacher's; answer: positions predicting the target only.",
                "headers": [
                    "variant",
                    "n",
                    "KL",
                    "KL − student",
                    "KL gap closed",
                    "top-1 agreement",
                    "answer KL",
                    "answer top-1",
                    *(f"KL − {ref}" for ref in references),
                ],
                "rows": rows,
            }
        )
    return parts


def _diff_cell(vs: Mapping[str, Any] | None) -> str:
    if vs is None:
        return "—"
    return f"{vs['kl_diff']:+.3g} [{vs['kl_diff_low']:+.3g}, {vs['kl_diff_high']:+.3g}]"


def _measure_keys() -> list[str]:
    return [f"{prefix}{m}" for prefix in POSITIONS.values() for m in MEASURES]


def read_agreement(folder: Path) -> dict[str, dict[str, list[dict]]]:
    """Per-example agreement rows[task][variant] from every <task>/<variant>.jsonl under `folder`."""
    rows = {}
    for path in sorted(folder.glob("*/*.jsonl")):
        lines = path.read_text().splitlines()
        rows.setdefault(path.parent.name, {})[path.stem] = [json.loads(line) for line in lines]
    return rows
