"""Render a report in headless Chromium and check that every image loaded.

    python bench/check_report.py                       # report/index.html of this checkout
    python bench/check_report.py --html path/index.html
    python bench/check_report.py --demo                 # builds a small report (real CKA heatmaps) in a temp
dir

A copy of the page gets a small script that, after load, writes one line per <img> (alt, complete,
naturalWidth x naturalHeight) into the DOM; `chromium --headless --dump-dom` prints that DOM. Also saves a
screenshot next to the copy. Exits non-zero if any image did not decode. Needs Debian's `chromium`.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from matplotlib.figure import Figure

from semalign.analysis.cka import cka_matrix, plot_heatmaps
from semalign.analysis.report import build_sections, render_html
from semalign.evaluation.table import build_tables

PROBE = """<script>
window.addEventListener('load', () => {
  const lines = [...document.images].map(
    i => `${i.alt}\\t${i.complete}\\t${i.naturalWidth}x${i.naturalHeight}`);
  const pre = document.createElement('pre'); pre.id = 'image-check'; pre.textContent = lines.join('\\n');
  document.body.appendChild(pre);
});
</script></body>"""


def demo_report(root: Path) -> Path:
    """A small project tree: CKA heatmaps of random layers, one line plot, a results table -> report."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(256, 16, generator=generator, dtype=torch.float64)
    teacher = [base @ torch.randn(16, 24, generator=generator, dtype=torch.float64) for _ in range(5)]
    student = [base[:, : 8 + 2 * k] for k in range(4)]
    matrix = cka_matrix(teacher, student)
    plot_heatmaps({"before": matrix, "after": matrix}, root / "plots/cka/demo.png", "demo", [1, 3, 4])
    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1, 2], [2, 1, 3])
    (root / "plots/train").mkdir(parents=True)
    fig.savefig(root / "plots/train/demo.png", dpi=60)
    summary = {"student": 0.24, "teacher": 0.42, "v1": 0.33}
    (root / "metrics").mkdir()
    (root / "metrics/table.json").write_text(
        json.dumps(
            build_tables(
                {
                    "lm_eval": {
                        name: {"mmlu": {"accuracy": a, "ci_low": a - 0.1, "ci_high": a + 0.1, "n": 100}}
                        for name, a in summary.items()
                    }
                }
            )
        )
    )
    html = root / "report/index.html"
    html.parent.mkdir()
    html.write_text(
        render_html("demo report", build_sections(root, {"models": {}, "cka": {"max_tokens": 256}}), root)
    )
    return html


def check(html: Path, workdir: Path) -> list[tuple[str, bool, int, int]]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH: apt-get install -y chromium")
    probe = workdir / "probe.html"
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE, 1), encoding="utf-8")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    subprocess.run(
        flags + ["--window-size=1200,2400", f"--screenshot={workdir / 'screenshot.png'}", probe.as_uri()],
        capture_output=True,
        timeout=120,
    )
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S)
    if found is None:
        sys.exit("the probe did not run: no #image-check in the dumped DOM")
    rows = []
    for line in filter(None, found.group(1).splitlines()):
        alt, complete, size = line.split("\t")
        width, height = map(int, size.split("x"))
        rows.append((alt, complete == "true", width, height))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--html", type=Path, default=Path("report/index.html"))
    parser.add_argument("--demo", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="check_report_"))
    html = demo_report(workdir / "tree") if args.demo else args.html
    expected = len(re.findall(r"<img ", html.read_text(encoding="utf-8")))
    rows = check(html, workdir)
    for alt, complete, width, height in rows:
        print(f"{'ok ' if complete and width > 0 else 'BAD'} {alt}: {width}x{height}")
    print(f"{len(rows)} of {expected} <img> seen by Chromium; screenshot: {workdir / 'screenshot.png'}")
    if len(rows) != expected or not all(complete and width > 0 for _, complete, width, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
