"""The run's report: one self-contained HTML page and the same content as markdown.

A report is a list of sections, each a list of blocks (text, table, image); `build_sections` gathers
them from a project tree (metrics/, plots/, data/ and the run's parameters), and the two renderers
write them out. The HTML embeds every image as a base64 data URI and has no external CSS or JS, so
the file can be mailed or opened offline; the markdown references images by relative path.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semalign.evaluation.table import markdown_table, result_tables

# The paper's Table 1 (arXiv 2510.24208 v1): Llama-2-13B-Chat teacher -> Llama-2-7B-Chat student, percent.
PAPER_TASKS = ("MMLU", "GSM8K", "HumanEval", "MBPP")
PAPER_TABLE1 = {
    "Llama-2-7B-Chat (student)": (44.20, 16.07, 14.05, 17.80),
    "Llama-2-13B-Chat (teacher)": (52.90, 20.55, 18.75, 19.20),
    "Seeking": (49.60, 28.23, 15.44, 20.60),
    "LaTen": (44.40, 20.47, 14.63, 18.20),
    "SemAlign": (50.30, 19.21, 17.34, 18.78),
}


@dataclass
class Block:
    """One piece of a section, rendered in this order: `text` (a paragraph), `code` (preformatted), a
    table (`headers` + `rows` of strings), `image` (a PNG path relative to the project root)."""

    text: str = ""
    code: str = ""
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    image: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def paper_table() -> Block:
    """Table 1 of the paper, with the share of the 7B→13B gap each method closes, as printed there."""
    student, teacher = PAPER_TABLE1["Llama-2-7B-Chat (student)"], PAPER_TABLE1["Llama-2-13B-Chat (teacher)"]
    rows = []
    for name, values in PAPER_TABLE1.items():
        cells = [f"{v:.2f}" for v in values]
        if name in ("Seeking", "LaTen", "SemAlign"):
            cells = [
                f"{c} (gap closed {(v - s) / (t - s):.2f})"
                for c, v, s, t in zip(cells, values, student, teacher)
            ]
        rows.append([name, *cells])
    return Block(headers=["paper's model / method", *PAPER_TASKS], rows=rows)


def stage_seconds(metrics_dir: str | Path) -> list[tuple[str, float | None]]:
    """(metrics file relative to metrics_dir, seconds) for every metrics/**/*.json; a "seconds" dict
    counts its "total" (or the sum of its values); files without the field give None."""
    metrics_dir = Path(metrics_dir)
    timings = []
    for path in sorted(metrics_dir.rglob("*.json")):
        seconds = json.loads(path.read_text()).get("seconds") if path.stat().st_size else None
        if isinstance(seconds, Mapping):
            seconds = seconds.get("total", sum(v for v in seconds.values() if isinstance(v, (int, float))))
        timings.append(
            (path.relative_to(metrics_dir).as_posix(), seconds if isinstance(seconds, (int, float)) else None)
        )
    return timings


def disk_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder (links not followed)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(os.lstat(Path(root) / name).st_size for root, _, names in os.walk(path) for name in names)


def store_sizes(data_dir: str | Path) -> list[tuple[str, int]]:
    """(data/<kind>/<name>, bytes) for each out under data_dir: the entries two levels down, e.g.
    data/cache/mmlu, data/bases/teacher.zarr, data/models/student."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return [
        (f"{data_dir.name}/{kind.name}/{entry.name}", disk_size(entry))
        for kind in sorted(p for p in data_dir.iterdir() if p.is_dir())
        for entry in sorted(kind.iterdir())
    ]


def human_bytes(count: int) -> str:
    """1536 -> "1.5 KiB"."""
    if count < 1024:
        return f"{count} B"
    size = count / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def alignment_blocks(metrics: Mapping[str, Any], task: str) -> list[Block]:
    """Fig. 2 fidelity means (bases variants and the random control) and every latent map on held-out tokens,
    from one `align` stage's metrics (metrics/align/<task>.json)."""
    fidelity = metrics["fidelity_mean_over_layers"]
    variants = list(next(iter(fidelity.values())))
    held_out = metrics["held_out"]
    layers = sorted(held_out["trained_layers"], key=int)
    measures = ("cosine", "relation")
    return [
        Block(
            text=f"**{task}: Fig. 2, mean cos(h, decompose→recompose(h)) over layers** (random: as many "
            f"random "
            "unit vectors as the vocabulary)",
            headers=["model", *variants],
            rows=[[role, *(f"{curves[v]:.3f}" for v in variants)] for role, curves in fidelity.items()],
        ),
        Block(
            text=f"**{task}: latent maps on held-out tokens** ({held_out['held_out_examples']} alignment "
            f"examples "
            f"no map was fitted on; targets made with {', '.join(f'`{m}`' for m in metrics['maps'])}): "
            "cosine and relation-geometry similarity between the student's own Δh_k and the mapped teacher "
            "quantity",
            headers=[
                "map",
                *(f"layer {k} {m}" for k in layers for m in measures),
                *(f"all layers {m}" for m in measures),
            ],
            rows=[
                [
                    name,
                    *(f"{held_out['trained_layers'][k][name][m]:.3f}" for k in layers for m in measures),
                    *(f"{held_out['mean_all_layers'][name][m]:.3f}" for m in measures),
                ]
                for name in held_out["mean_all_layers"]
            ],
        ),
    ]


def cka_blocks(metrics: Mapping[str, Any], task: str) -> list[Block]:
    """Per heatmap of one `cka` stage's metrics (metrics/cka/<task>.json): mean CKA, CKA at the §4.1 depth
    map, and the best-matching teacher layer per student layer."""
    panels = [name for name, value in metrics.items() if isinstance(value, Mapping) and "mean_cka" in value]
    return [
        Block(
            text=f"**{task}: linear CKA, teacher layer × student layer** ({metrics['tokens']} tokens; "
            f"{metrics['quantity']}; heatmaps in `plots/cka/{task}.png`)",
            headers=[
                "panel",
                "mean CKA",
                "mean CKA at the depth map",
                "best teacher layer per student layer",
            ],
            rows=[
                [
                    name,
                    f"{metrics[name]['mean_cka']:.3f}",
                    f"{metrics[name]['mean_cka_at_depth_map']:.3f}",
                    " ".join(str(t) for t in metrics[name]["best_teacher_layer"]),
                ]
                for name in panels
            ],
        )
    ]


def build_sections(root: str | Path, params: Mapping[str, Any]) -> list[Section]:
    """The report's sections from a project tree at `root` (metrics/, plots/, data/) and the run's params."""
    root = Path(root)
    models = params.get("models", {})
    sections = [
        Section(
            "Models",
            [
                Block(
                    headers=["role", "source"],
                    rows=[
                        [role, ", ".join(f"{k}: {v}" for k, v in spec.items())]
                        for role, spec in models.items()
                    ],
                )
            ],
        )
    ]

    results = Section("Results (this run)")
    table_path = root / "metrics/table.json"
    if table_path.is_file():
        for part in result_tables(json.loads(table_path.read_text())):
            results.blocks.append(
                Block(
                    text=f"**{part['title']}**" + (f" {part['note']}" if part["note"] else ""),
                    headers=part["headers"],
                    rows=part["rows"],
                )
            )
    else:
        results.blocks.append(Block(text="No metrics/table.json: the table stage has not run."))
    sections.append(results)
    paper = paper_table()
    paper.text = (
        "Numbers reported in the paper (arXiv 2510.24208, Table 1), Llama 2 13B-Chat teacher → "
        "Llama 2 7B-Chat student, percent; gap closed = (method − 7B) / (13B − 7B). Different models, "
        "data sizes and protocol from this run: read them side by side, not as a comparison."
    )
    sections.append(Section("For reference: the paper's Table 1 (not this run)", [paper]))

    alignment = [
        block
        for path in sorted((root / "metrics/align").glob("*.json"))
        for block in alignment_blocks(json.loads(path.read_text()), path.stem)
    ]
    if alignment:
        sections.append(Section("Is the alignment faithful? (this run)", alignment))

    similarity = [
        block
        for path in sorted((root / "metrics/cka").glob("*.json"))
        for block in cka_blocks(json.loads(path.read_text()), path.stem)
    ]
    if similarity:
        sections.append(
            Section("Which teacher layer does each student layer resemble? (this run)", similarity)
        )

    plots = sorted((root / "plots").rglob("*.png")) if (root / "plots").is_dir() else []
    sections.append(
        Section(
            "Plots",
            [
                Block(text=f"`{png.relative_to(root).as_posix()}`", image=png.relative_to(root).as_posix())
                for png in plots
            ],
        )
    )

    sections.append(
        Section(
            "Parameters of the run",
            [
                Block(text=f"`{name}`", code=yaml.safe_dump(section, sort_keys=False).strip())
                for name, section in params.items()
                if name != "models"
            ],
        )
    )

    timings = stage_seconds(root / "metrics") if (root / "metrics").is_dir() else []
    sections.append(
        Section(
            "Wall time per stage",
            [
                Block(
                    text='The "seconds" field of each metrics file (time inside the stage; Python start-up '
                    "excluded).",
                    headers=["metrics file", "seconds"],
                    rows=[[name, "—" if s is None else f"{s:.1f}"] for name, s in timings],
                )
            ],
        )
    )
    sections.append(
        Section(
            "Size on disk",
            [
                Block(
                    headers=["store / out", "size"],
                    rows=[[name, human_bytes(size)] for name, size in store_sizes(root / "data")],
                )
            ],
        )
    )
    return sections


def render_markdown(title: str, sections: Sequence[Section], image_prefix: str = "") -> str:
    """Markdown; images as `![](image_prefix + path)` (e.g. "../" from a report/ folder)."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if block.text:
                lines += [block.text, ""]
            if block.code:
                lines += ["```", block.code, "```", ""]
            if block.headers:
                lines += markdown_table(block.headers, block.rows) + [""]
            if block.image:
                lines += [f"![{block.image}]({image_prefix}{block.image})", ""]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #bbb;padding:3px 8px;"
    "text-align:left}th{background:#eee}img{max-width:100%;display:block;margin:.3em 0 1.5em}"
    "pre{background:#f6f6f6;padding:.5em}code{background:#f6f6f6}"
)


def _inline(text: str) -> str:
    """Escaped text with `code` and **bold** spans."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title: str, sections: Sequence[Section], root: str | Path) -> str:
    """One self-contained HTML page: inline CSS, every image read from `root` and embedded as a data URI."""
    root = Path(root)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if block.text:
                out.append(f"<p>{_inline(block.text)}</p>")
            if block.code:
                out.append(f"<pre>{html.escape(block.code)}</pre>")
            if block.headers:
                out.append(
                    "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.headers) + "</tr>"
                )
                out += [
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                ]
                out.append("</table>")
            if block.image:
                data = base64.b64encode((root / block.image).read_bytes()).decode("ascii")
                out.append(f'<img alt="{html.escape(block.image)}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
