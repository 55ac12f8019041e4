"""Line plots (PNG) shared by the stages that draw per-layer or per-step curves."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def plot_curves(
    series: dict[str, list[float]],
    path: str | Path,
    title: str,
    ylabel: str,
    first_layer: int = 0,
    xlabel: str = "layer",
    x: list[float] | None = None,
) -> None:
    """Line plot (PNG), one line per series, at x = first_layer, first_layer + 1, ... or at the given `x`
    (then on a log axis: used for counts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.0, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(
            x if x is not None else range(first_layer, first_layer + len(values)),
            values,
            marker="o",
            markersize=3,
            label=name,
        )
    if x is not None:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
