"""Is decomposition faithful? (paper Fig. 2) and how close are targets to the student before training.

Fidelity of a model's bases at layer ℓ: the mean over real tokens of cos(h, S Sᵀ h / ‖h‖), with S Sᵀ
from `semalign.alignment.folded_map` (same bases on both sides). The paper reports it high for
output-side and near zero for input-side bases; the random-basis control (as many random unit vectors
as the vocabulary) says how much of "high" any large set of directions would give.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from semalign.alignment import reconstruction_cosine, row_cosine


def layer_fidelity(states: dict[int, torch.Tensor], self_maps: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per named self map, the mean reconstruction cosine of every layer's states `[tokens, d]`, in layer order."""
    layers = sorted(states)
    return {name: [float(reconstruction_cosine(states[ell], m).mean()) for ell in layers] for name, m in self_maps.items()}


def mean_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean row cosine of `[tokens, d]` tensors (float64 inside)."""
    return float(row_cosine(x, y).mean())


def curve_rows(series: dict[str, list[float]], first_layer: int = 0) -> list[dict]:
    """Wide rows {"layer": ℓ, <series>: value, ...} for a DVC plot with several y fields."""
    length = len(next(iter(series.values())))
    return [{"layer": first_layer + i, **{name: values[i] for name, values in series.items()}} for i in range(length)]


def plot_curves(series: dict[str, list[float]], path: str | Path, title: str, ylabel: str, first_layer: int = 0,
                xlabel: str = "layer") -> None:
    """Line plot (PNG), one line per series, x = first_layer, first_layer + 1, ..."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.0, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(range(first_layer, first_layer + len(values)), values, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
