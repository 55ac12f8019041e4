"""The models the evaluations score, by variant name: a base model, or the student with a method's output.

Layout under the project root (what the DVC stages write): `data/models/<teacher|student>/` (HF directories),
`data/adapters/<task>/<method>/` (a LoRA adapter, merged into the student, or a student delta,
delta.safetensors, added to its weights).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from semalign.baselines.delta import DELTA_FILE, apply_delta, load_delta
from semalign.files import sha256_of
from semalign.models import load_hf_dir, merge_adapter

BASE_MODELS = ("teacher", "student")


def load_variant(
    task: str, variant: str, device: str | torch.device, root: str | Path = "."
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, sha256 over the weight files) of a base model or of the student + an adapter / a
    delta of `task`."""
    root = Path(root)
    folders = [root / "data/models" / (variant if variant in BASE_MODELS else "student")]
    model, tokenizer = load_hf_dir(folders[0], device=device)
    if variant not in BASE_MODELS:
        adapter = root / "data/adapters" / task / variant
        model = (
            apply_delta(model, load_delta(adapter)).eval()
            if (adapter / DELTA_FILE).is_file()
            else merge_adapter(model, adapter)
        )
        folders.append(adapter)
    digest = hashlib.sha256()
    for folder in folders:
        for weights in sorted(folder.glob("*.safetensors")):
            digest.update(f"{weights.name}:{sha256_of(weights)}|".encode())
    return model, tokenizer, digest.hexdigest()
