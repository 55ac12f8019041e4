"""dvc.yaml stays complete: every stage lists as deps the library modules its script imports (transitively,
package __init__s included) and tracks every params key it reads, so that editing either reruns it."""

import ast
import dataclasses
import functools
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semalign.config import params_section

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
# Read but deliberately not tracked, with the reason.
UNTRACKED = {"train.parallel": "how processes share the student (ddp | fsdp), not what they compute"}


@functools.cache
def stages() -> dict[str, tuple[dict, Path]]:
    """{stage name: (its definition, its script)} from dvc.yaml (foreach/matrix templates included)."""
    found = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        script = re.search(r"python (stages/\w+\.py)", body["cmd"])
        found[name] = (body, ROOT / script.group(1))
    return found


def module_file(name: str) -> Path | None:
    """The file that defines module `name` under lib/, if it is one."""
    base = LIB / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Files under lib/semalign that importing `path` runs directly: each imported module, the package
    __init__s above it, and a name that is itself a submodule (`from semalign.align import pairing`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        ours = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("semalign")
        if ours and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("semalign")}
    parts = [name.split(".") for name in names]
    files = {module_file(".".join(p[:i])) for p in parts for i in range(1, len(p) + 1)}
    return files - {None}


@functools.cache
def library_closure(script: Path) -> frozenset[str]:
    """Every file under lib/semalign that running `script` imports, relative to the repository."""
    seen, todo = set(), [script]
    while todo:
        for file in imported_files(todo.pop()) - seen:
            seen.add(file)
            todo.append(file)
    return frozenset(file.relative_to(ROOT).as_posix() for file in seen)


def covered(path: str, deps: list[str]) -> bool:
    """Whether a dep names `path` or a directory above it."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_stage_depends_on_the_library_modules_it_imports(name):
    body, script = stages()[name]
    deps = [str(dep) for dep in body["deps"]]
    assert script.relative_to(ROOT).as_posix() in deps
    missing = sorted(path for path in library_closure(script) if not covered(path, deps))
    assert not missing, f"dvc.yaml stage {name} imports but does not list {missing}"
    stale = [dep for dep in deps if dep.startswith("lib/") and not (ROOT / dep).exists()]
    assert not stale, f"dvc.yaml stage {name} lists {stale}, which do not exist"


@pytest.mark.parametrize("name", sorted(stages()))
def test_no_stage_lists_a_library_module_it_does_not_import(name):
    """Library deps are the modules the stage imports, file by file: a module it does not run (a
    study-only script's, another stage's run module) edited must not make it stale. No directories."""
    body, script = stages()[name]
    listed = [str(dep) for dep in body["deps"] if str(dep).startswith("lib/")]
    folders = [dep for dep in listed if (ROOT / dep).is_dir()]
    assert not folders, f"dvc.yaml stage {name} lists folders {folders}; list the modules it imports"
    extra = sorted(set(listed) - library_closure(script))
    assert not extra, f"dvc.yaml stage {name} lists {extra}, which its script never imports"


def test_the_library_uses_no_relative_imports():
    """The import walk follows absolute `semalign.` imports only; a relative one would escape it."""
    relative = [
        path.relative_to(ROOT).as_posix()
        for path in sorted(LIB.rglob("*.py"))
        if any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(ast.parse(path.read_text())))
    ]
    assert not relative, f"relative imports in {relative}; import from semalign.<module>"


def test_the_import_walk_follows_modules_and_package_inits(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "from semalign.align import pairing\n\ndef f():\n    from semalign.files import write_json\n"
    )
    found = library_closure(script)
    # the package's __init__s, the module named, what it imports; files is imported inside a function
    assert {"lib/semalign/__init__.py", "lib/semalign/align/__init__.py"} <= found
    assert {"lib/semalign/align/pairing.py", "lib/semalign/config.py", "lib/semalign/errors.py"} <= found
    assert "lib/semalign/files.py" in found
    assert "lib/semalign/align/targets.py" not in found  # a sibling the module does not import
    assert "lib/semalign/align/run.py" not in found
    assert covered("lib/semalign/evaluation/runner.py", ["lib/semalign/evaluation"])
    assert not covered("lib/semalign/evaluation_x.py", ["lib/semalign/evaluation"])


def _pattern(node: ast.expr) -> str:
    """A params key argument as text; the parts formatted at run time (f"models.{role}") become "*"."""
    if isinstance(node, ast.Constant):
        return node.value
    return "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)


def read_keys(script: Path) -> set[str]:
    """The params keys `script` reads: each field of a config it builds with read_section (less the keys it
    drops or sets itself), each params_section key, every section for read_params."""
    tree = ast.parse(script.read_text())
    origins = {
        alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    keys = set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
        if call.func.id == "read_section":
            cls = getattr(importlib.import_module(origins[call.args[0].id]), call.args[0].id)
            key = _pattern(call.args[1])
            options = {k.arg: k.value for k in call.keywords}
            skipped = set(ast.literal_eval(options.pop("drop", ast.Constant(()))))
            skipped |= set(options)
            keys |= {f"{key}.{f.name}" for f in dataclasses.fields(cls) if f.name not in skipped}
        elif call.func.id == "params_section":
            keys.add(_pattern(call.args[0]))
        elif call.func.id == "read_params":
            keys |= set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    return keys


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_params_key_a_stage_reads_is_tracked(name):
    body, script = stages()[name]
    tracked = [re.sub(r"\$\{[^}]+\}", "*", str(p)) for p in body.get("params", [])]
    untracked = sorted(
        key
        for key in read_keys(script) - set(UNTRACKED)
        if not any(key == t or key.startswith(t + ".") for t in tracked)
    )
    assert not untracked, f"dvc.yaml stage {name} reads but does not track params {untracked}"
    for key in tracked:  # DVC can only track a key params.yaml has
        params_section(key.split(".*")[0], ROOT / "params.yaml")


def test_the_params_walk_sees_configs_drops_overrides_and_direct_reads(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "from semalign.student.training import TrainConfig\n"
        "config = read_section(TrainConfig, 'train', drop=('objectives',), objective='v1')\n"
        "roles = params_section(f'models.{role}')\n"
    )
    keys = read_keys(script)
    assert {"train.lr", "train.weight_decay", "train.max_grad_norm", "models.*"} <= keys
    assert "train.objective" not in keys and "train.objectives" not in keys


def test_the_lock_records_only_stages_dvc_yaml_defines():
    """`dvc repro` never drops a stage that dvc.yaml stopped defining from dvc.lock; a stale entry (a
    renamed matrix, an objective no longer run) would pass for a result of the current pipeline."""
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--all", "--name-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stale = sorted(set(locked) - set(listed))
    assert not stale, f"dvc.lock records {stale}, which dvc.yaml no longer defines; delete those entries"
