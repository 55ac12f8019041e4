"""Stage start-up: a subpackage's __init__ imports none of its modules, so a stage pays only for the libraries
the modules it runs use (peft, captum and matplotlib cost seconds in each of ~40 stage processes)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "semalign"


@pytest.mark.parametrize("init", sorted(LIB.glob("*/__init__.py")), ids=lambda p: p.parent.name)
def test_subpackage_inits_import_nothing_of_the_library(init):
    imports = [
        node
        for node in ast.walk(ast.parse(init.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    library = [node.lineno for node in imports if "semalign" in ast.unparse(node)]
    assert not library, f"{init} imports library modules at lines {library}; list them in __all__ instead"


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("semalign.teacher.bases", ["captum", "matplotlib", "peft"]),
        ("semalign.teacher.cache", ["captum", "matplotlib", "peft"]),
        ("semalign.teacher.attribution", ["captum", "peft"]),  # its plots for seeking and laten
        ("semalign.evaluation.agreement", ["captum", "matplotlib", "peft"]),
        ("semalign.align.pairing", ["captum", "matplotlib", "peft", "torch"]),
        # the readers of results the table, report, power and verdict share
        ("semalign.evaluation.results", ["torch", "transformers"]),
        ("semalign.evaluation.agreement_summary", ["torch", "transformers"]),
        ("semalign.evaluation.verdict", ["torch", "transformers"]),
        ("semalign.evaluation.power", ["torch", "transformers"]),
        ("semalign.evaluation.table", ["torch", "transformers"]),
        ("semalign.analysis.report", ["torch", "transformers"]),
    ],
)
def test_a_module_does_not_load_what_only_its_siblings_use(module, absent):
    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == [], f"importing {module} loads {loaded.split()}"
