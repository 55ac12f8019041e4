"""The report from a small fake project tree: every plot embedded as a PNG that decodes to the original,
the results table's values present, the paper's Table 1 labelled as the paper's, timings and sizes."""

import base64
import json
import re
import struct

import pytest
from matplotlib.figure import Figure

from semalign.analysis.report import (
    PAPER_TABLE1,
    build_sections,
    human_bytes,
    render_html,
    render_markdown,
    stage_seconds,
    store_sizes,
)
from semalign.evaluation.table import build_tables

PARAMS = {
    "models": {
        "teacher": {"source": "hf_dir", "path": "/m/teacher"},
        "student": {"source": "embedded", "name": "s"},
    },
    "train": {"objective": "v1", "lr": 0.0003},
    "cka": {"max_tokens": 4096},
}


def _png(path, width_in, height_in, dpi=50):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(width_in, height_in))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(path, dpi=dpi)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _summary(acc, n=100):
    return {"accuracy": acc, "ci_low": acc - 0.1, "ci_high": acc + 0.1, "n": n}


@pytest.fixture
def tree(tmp_path):
    _png(tmp_path / "plots/align/mmlu_cross.png", 4, 3)
    _png(tmp_path / "plots/cka/mmlu.png", 6, 5)
    _png(tmp_path / "plots/train/mmlu.png", 3, 2)
    table = build_tables(
        {
            "lm_eval": {
                "student": {"mmlu": _summary(0.24)},
                "teacher": {"mmlu": _summary(0.42)},
                "v1": {"mmlu": _summary(0.33)},
            }
        }
    )
    metrics = tmp_path / "metrics"
    (metrics / "eval/mmlu").mkdir(parents=True)
    (metrics / "table.json").write_text(json.dumps(table))
    (metrics / "eval/mmlu/v1.json").write_text(json.dumps({"seconds": 79.25}))
    (metrics / "bases.json").write_text(json.dumps({"seconds": {"head_gram": 1.0, "total": 48.0}}))
    (metrics / "pair.json").write_text(json.dumps({"pairs": 3}))
    (metrics / "cka").mkdir()
    summary = {"mean_cka": 0.3821, "mean_cka_at_depth_map": 0.655, "best_teacher_layer": [1, 2, 2]}
    (metrics / "cka/mmlu.json").write_text(
        json.dumps(
            {
                "tokens": 1182,
                "quantity": "layer contributions Δh",
                "depth_map": [1, 2, 4],
                "before_contribution_raw": summary,
                "before_residual_raw": summary | {"mean_cka": 0.7943},
                "seconds": 3.0,
            }
        )
    )
    (tmp_path / "data/cache/mmlu/alignment.zarr").mkdir(parents=True)
    (tmp_path / "data/cache/mmlu/alignment.zarr/c0").write_bytes(b"x" * 3000)
    (tmp_path / "data/cache/mmlu/alignment.zarr/c1").write_bytes(b"x" * 1000)
    (tmp_path / "data/models/student").mkdir(parents=True)
    (tmp_path / "data/models/student/w.safetensors").write_bytes(b"y" * 10)
    return tmp_path


def test_html_embeds_every_plot_as_a_png_of_the_original_size(tree):
    html = render_html("run", build_sections(tree, PARAMS), tree)
    embedded = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">', html)
    plots = sorted(p.relative_to(tree).as_posix() for p in (tree / "plots").rglob("*.png"))
    assert sorted(alt for alt, _ in embedded) == plots
    for alt, data in embedded:
        decoded = base64.b64decode(data, validate=True)
        assert decoded == (tree / alt).read_bytes()
        assert (
            _png_size(decoded)
            == {
                "plots/align/mmlu_cross.png": (200, 150),
                "plots/cka/mmlu.png": (300, 250),
                "plots/train/mmlu.png": (150, 100),
            }[alt]
        )
    assert "<link" not in html and "<script" not in html and "http" not in html  # nothing external


def test_report_has_results_paper_table_params_timings_and_sizes(tree):
    sections = build_sections(tree, PARAMS)
    titles = [s.title for s in sections]
    assert "For reference: the paper's Table 1 (not this run)" in titles
    for text in (render_html("run", sections, tree), render_markdown("run", sections, "../")):
        assert "0.240 [0.140, 0.340] (100)" in text and "0.330 [0.230, 0.430] (100)" in text
        assert "0.50" in text  # v1 closes (0.33 - 0.24) / (0.42 - 0.24) of the gap
        assert "Llama-2-13B-Chat (teacher)" in text and "Llama 2 13B-Chat teacher" in text
        assert "52.90" in text and "50.30 (gap closed 0.70)" in text  # (50.30 - 44.20) / (52.90 - 44.20)
        assert "/m/teacher" in text and "max_tokens: 4096" in text
        assert "79.2" in text or "79.3" in text
    cka = next(s for s in sections if s.title.startswith("Which teacher layer"))
    assert "1182 tokens; layer contributions Δh" in cka.blocks[0].text
    assert cka.blocks[0].rows == [
        ["before_contribution_raw", "0.382", "0.655", "1 2 2"],
        ["before_residual_raw", "0.794", "0.655", "1 2 2"],
    ]
    md = render_markdown("run", sections, "../")
    assert "![plots/cka/mmlu.png](../plots/cka/mmlu.png)" in md
    assert "| data/cache/mmlu | 3.9 KiB |" in md and "| data/models/student | 10 B |" in md


def test_stage_seconds_reads_numbers_totals_and_missing_fields(tree):
    assert stage_seconds(tree / "metrics") == [
        ("bases.json", 48.0),
        ("cka/mmlu.json", 3.0),
        ("eval/mmlu/v1.json", 79.25),
        ("pair.json", None),
        ("table.json", None),
    ]
    assert store_sizes(tree / "data") == [("data/cache/mmlu", 4000), ("data/models/student", 10)]
    assert [human_bytes(n) for n in (10, 1536, 5 * 2**20, 3 * 2**30)] == [
        "10 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]


def test_paper_numbers_are_the_papers():
    assert PAPER_TABLE1["SemAlign"] == (50.30, 19.21, 17.34, 18.78)
    assert PAPER_TABLE1["Llama-2-7B-Chat (student)"] == (44.20, 16.07, 14.05, 17.80)


def test_missing_table_says_so(tmp_path):
    text = render_markdown("run", build_sections(tmp_path, PARAMS))
    assert "No metrics/table.json" in text


def test_alignment_section_tabulates_fig2_and_every_held_out_map(tree):
    maps = {
        "semantic": {"cosine": 0.0282, "relation": 0.6167},
        "ridge": {"cosine": 0.8205, "relation": 0.997},
    }
    align = {
        "maps": ["semantic"],
        "fidelity_mean_over_layers": {"teacher": {"head": 0.4896, "random": 0.995}},
        "held_out": {
            "fit_examples": 16,
            "held_out_examples": 16,
            "trained_layers": {"1": maps},
            "mean_all_layers": {
                "semantic": {"cosine": 0.0337, "relation": 0.5847},
                "ridge": {"cosine": 0.5101, "relation": 0.9353},
            },
        },
    }
    (tree / "metrics/align").mkdir()
    (tree / "metrics/align/mmlu.json").write_text(json.dumps(align))
    section = next(
        s for s in build_sections(tree, PARAMS) if s.title == "Is the alignment faithful? (this run)"
    )
    fidelity, held_out = section.blocks
    assert fidelity.headers == ["model", "head", "random"] and fidelity.rows == [
        ["teacher", "0.490", "0.995"]
    ]
    assert held_out.headers[:3] == ["map", "layer 1 cosine", "layer 1 relation"]
    assert held_out.rows == [
        ["semantic", "0.028", "0.617", "0.034", "0.585"],
        ["ridge", "0.821", "0.997", "0.510", "0.935"],
    ]
    assert "| ridge | 0.821 | 0.997 | 0.510 | 0.935 |" in render_markdown("run", build_sections(tree, PARAMS))
