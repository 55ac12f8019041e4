"""The output both baselines share: a student delta, {student state-dict key: ΔW float32}.

Saved as `<dir>/delta.safetensors` plus `<dir>/delta.json` (what made it); `apply_delta` adds it to a
student's weights in place. `target_linears` finds the weight matrices both methods move.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from semalign.errors import SemalignError
from semalign.files import write_json
from semalign.models import decoder_layers

DELTA_FILE = "delta.safetensors"
DESCRIPTION_FILE = "delta.json"


def target_linears(
    model: PreTrainedModel, target_modules: tuple[str, ...]
) -> dict[tuple[int, str], nn.Linear]:
    """{(layer ℓ = 1..L, kind e.g. "up_proj"): the Linear} for every decoder layer and target module kind."""
    found = {}
    for ell, layer in enumerate(decoder_layers(model), start=1):
        for path, module in layer.named_modules():
            kind = path.rsplit(".", 1)[-1]
            if kind in target_modules and isinstance(module, nn.Linear):
                found[(ell, kind)] = module
    missing = sorted(set(target_modules) - {kind for _, kind in found})
    if missing:
        raise SemalignError(
            f"target modules {missing} are not Linear layers of {type(model).__name__}; "
            "use module names such as up_proj, down_proj, v_proj, o_proj"
        )
    return found


def weight_keys(
    model: PreTrainedModel, linears: dict[tuple[int, str], nn.Linear]
) -> dict[tuple[int, str], str]:
    """The state-dict key of each Linear's weight, e.g. (1, "up_proj") ->
    "model.layers.0.mlp.up_proj.weight"."""
    names = {id(module): name for name, module in model.named_modules()}
    return {site: f"{names[id(module)]}.weight" for site, module in linears.items()}


def save_delta(delta: dict[str, torch.Tensor], out_dir: str | Path, description: dict[str, Any]) -> None:
    """Write `delta` ({key: ΔW}, float32, contiguous) and its description to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {key: value.detach().float().contiguous().cpu() for key, value in delta.items()},
        str(out_dir / DELTA_FILE),
    )
    write_json(
        out_dir / DESCRIPTION_FILE,
        {
            "format": "student state-dict key -> float32 ΔW added to that weight",
            "keys": sorted(delta),
            **description,
        },
    )


def load_delta(directory: str | Path) -> dict[str, torch.Tensor]:
    """Read back what `save_delta` wrote."""
    path = Path(directory) / DELTA_FILE
    if not path.is_file():
        raise SemalignError(
            f"{path} does not exist; run the baseline stage that writes it (seeking or laten)"
        )
    return load_file(str(path))


@torch.no_grad()
def apply_delta(model: PreTrainedModel, delta: dict[str, torch.Tensor]) -> PreTrainedModel:
    """Add each ΔW to the model's parameter of the same key, in place; returns the model."""
    params = dict(model.named_parameters())
    for key, value in delta.items():
        if key not in params:
            raise SemalignError(
                f"delta key {key!r} is not a parameter of {type(model).__name__}; the delta was "
                "made for another student, rerun the baseline stage"
            )
        if params[key].shape != value.shape:
            raise SemalignError(
                f"delta {key!r} has shape {tuple(value.shape)} but the student's weight is "
                f"{tuple(params[key].shape)}; rerun the baseline stage for this student"
            )
        params[key].add_(value.to(params[key].device, params[key].dtype))
    return model
