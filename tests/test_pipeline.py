"""The DVC pipeline end to end on tiny models: `dvc repro` runs, and a student-only change reruns
only student-side stages (the teacher cache and attribution are reused)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semalign.models import save_hf_dir
from semalign.tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEACHER_SIDE = {"materialize@teacher", "bases@teacher", "data@mmlu", "attribute@mmlu", "cache@mmlu"}
STUDENT_SIDE = {"pair@mmlu", "align@mmlu", "train@mmlu", "evaluate_transfer@mmlu", "table", "cka@mmlu", "report"}
EVALUATED = {"evaluate@mmlu-student", "evaluate@mmlu-teacher"}


def mmlu_rows(count: int) -> str:
    rows = []
    for i in range(count):
        letter = "ABCD"[i % 4]
        options = "\n".join(f"{x}. option {x.lower()} {i}" for x in "ABCD")
        rows.append({"question": f"Question {i}: which option is right?", "options": options,
                     "answer": f"{letter}. option {letter.lower()} {i}"})
    return "".join(json.dumps(r) + "\n" for r in rows)


def tiny_params(models: Path, task_file: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"] = {role: {"source": "hf_dir", "path": str(models / role)} for role in ("teacher", "student")}
    params["bases"]["chunk_rows"] = 128
    params["data"].update(max_length=64, tasks={"mmlu": {"path": str(task_file), "evaluation": 4, "attribution": 4,
                                                          "alignment": 4, "training": 6}})
    params["cache"].update(top_k=4, batch_size=2)
    params["align"]["chunk_rows"] = 128
    params["train"].update(epochs=1, batch_size=4, micro_batch_size=2)
    params["evaluate"].update(batch_size=4, limit={"mmlu": 4})
    return params


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "stages", repo / "stages")
    shutil.copytree(ROOT / "lib", repo / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    tokenizer = tiny_tokenizer()
    save_hf_dir(tiny_model("qwen2", seed=1, num_layers=4, hidden_size=48), tokenizer, repo / "models" / "teacher")
    save_hf_dir(tiny_model("qwen2", seed=2, num_layers=3, hidden_size=32, num_heads=4, num_kv_heads=2,
                           intermediate_size=64), tokenizer, repo / "models" / "student")
    (repo / "mmlu.jsonl").write_text(mmlu_rows(24))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(repo / "models", repo / "mmlu.jsonl")))
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    return repo


def test_repro_runs_every_stage_then_student_changes_reuse_the_teacher_work(project):
    first = ran_stages(run([sys.executable, "-m", "dvc", "repro"], project))
    assert TEACHER_SIDE | STUDENT_SIDE | EVALUATED <= first
    assert (project / "data/cache/mmlu/training.zarr/manifest.json").is_file()
    assert (project / "data/targets/mmlu/training.zarr/manifest.json").is_file()
    assert (project / "data/adapters/mmlu/v1/adapter_model.safetensors").is_file()
    metrics = json.loads((project / "metrics/align/mmlu.json").read_text())
    assert set(metrics["fidelity_mean_over_layers"]["teacher"]) == {"head", "head_normed", "input", "random"}
    table = json.loads((project / "metrics/table.json").read_text())
    assert {"student", "teacher", "v1"} <= set(table["variants"])
    cka = json.loads((project / "metrics/cka/mmlu.json").read_text())
    assert cka["depth_map"] == [1, 2, 4] and len(cka["after_aligned"]["best_teacher_layer"]) == 3
    html = (project / "report/index.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((project / "plots").rglob("*.png"))) >= 6
    assert "plots/cka/mmlu.png" in html and (project / "report/README.md").is_file()

    for key, value in (("pair", {"mode": "v2"}), ("train", {"objective": "v2"})):
        params = yaml.safe_load((project / "params.yaml").read_text())
        params[key].update(value)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        output = run([sys.executable, "-m", "dvc", "repro"], project)
        expected = STUDENT_SIDE if key == "pair" else {"train@mmlu", "evaluate_transfer@mmlu", "table", "cka@mmlu",
                                                       "report"}
        assert ran_stages(output) == expected, output
        for stage in TEACHER_SIDE | EVALUATED:
            assert f"Stage '{stage}' didn't change, skipping" in output
    assert (project / "data/adapters/mmlu/v2/adapter_model.safetensors").is_file()


def test_training_runs_with_the_teacher_weights_gone(project):
    teacher = project / "data/models/teacher"
    hidden = project / "teacher-away"
    teacher.rename(hidden)
    try:
        run([sys.executable, "stages/train.py", "--task", "mmlu"], project)
    finally:
        hidden.rename(teacher)


def test_student_side_stages_never_depend_on_teacher_weights():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("pair", "fold", "align", "train", "evaluate_transfer", "cka"):
        deps = stages[name].get("do", stages[name])["deps"]
        assert "data/models/teacher" not in deps, f"{name} must not load the teacher's weights"
    for name in ("data", "attribute", "cache"):
        params = stages[name]["do"]["params"]
        assert not any(str(p).startswith(("models.student", "pair", "align", "train")) for p in params), name
