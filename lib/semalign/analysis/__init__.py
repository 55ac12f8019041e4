"""Analysis: linear CKA between teacher and student layers, and the self-contained report."""

from semalign.analysis.cka import (
    CkaConfig,
    best_matches,
    cka_matrix,
    even_rows,
    layer_contributions,
    linear_cka,
    plot_heatmaps,
)
from semalign.analysis.report import build_sections, render_html, render_markdown

__all__ = [
    "CkaConfig",
    "best_matches",
    "build_sections",
    "cka_matrix",
    "even_rows",
    "layer_contributions",
    "linear_cka",
    "plot_heatmaps",
    "render_html",
    "render_markdown",
]
