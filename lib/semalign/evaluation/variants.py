"""The models the evaluations score: a base model directory (teacher or student), or the student with a
method's output (`data/adapters/<task>/<method>/` in the pipeline): a LoRA adapter, merged into the student,
or a student delta (delta.safetensors, the baselines) added to its weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from semalign.baselines.delta import DELTA_FILE, apply_delta, load_delta
from semalign.errors import SemalignError
from semalign.files import sha256_of
from semalign.models import load_hf_dir, merge_adapter

BASE_MODELS = ("teacher", "student")


def load_variant(
    variant: str,
    model_dir: Path,
    adapter: Path | None,
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, sha256 over the weight files) of `variant`: the model in `model_dir`, with the
    adapter or delta in `adapter` applied for a method, then cast to `dtype` (the adapter or delta is
    applied in float32 first, so a bfloat16 variant rounds its merged weights once) and frozen for scoring
    (`for_inference`). A base model with an
    adapter, or a method without one, stops: its results would be recorded under the wrong name."""
    if variant in BASE_MODELS and adapter is not None:
        raise SemalignError(f"variant {variant} is a base model but got adapter {adapter}; drop --adapter")
    if variant not in BASE_MODELS and adapter is None:
        raise SemalignError(
            f"variant {variant} is a method but got no adapter; pass --adapter data/adapters/<task>/{variant}"
        )
    folders = [model_dir]
    model, tokenizer = load_hf_dir(model_dir, device=device)
    if adapter is not None:
        model = (
            apply_delta(model, load_delta(adapter)).eval()
            if (adapter / DELTA_FILE).is_file()
            else merge_adapter(model, adapter)
        )
        folders.append(adapter)
    model = for_inference(model.to(dtype))
    digest = hashlib.sha256()
    for folder in folders:
        for weights in sorted(folder.glob("*.safetensors")):
            digest.update(f"{weights.name}:{sha256_of(weights)}|".encode())
    return model, tokenizer, digest.hexdigest()


def for_inference(model: PreTrainedModel) -> PreTrainedModel:
    """`model` in eval mode with no parameter requiring a gradient, its output head fed a contiguous input.

    Why the hook: transformers' `logits_to_keep=1` (next-token scoring, and the prefill step of `generate`)
    hands the head the strided slice `hidden[:, -1:]`. For a strided 3-D input and a weight that needs no
    gradient, torch's matmul does not fold the batch into one matrix product: it runs bmm on the weight
    expanded per row, and in bfloat16 (the default's evaluate.dtype) that bmm copies the [vocab, d_model]
    head once per sequence: a merged LoRA student, whose weights PEFT froze, scored 3-4x slower than the
    student (bench/head_input.py; float32's bmm does not copy and gains ~1.1x). Copying the
    [batch, 1, d_model] slice instead costs nothing."""
    model.eval().requires_grad_(False)
    model.get_output_embeddings().register_forward_pre_hook(
        lambda _head, args: (args[0].contiguous(), *args[1:])
    )
    return model
