"""The DVC pipeline end to end on tiny models: `dvc repro` runs (SemAlign and both baselines), a
student-only change reruns only student-side stages (the teacher cache, attribution and baselines are reused),
and an evaluation-only task (asdiv) is tokenised and scored by teacher and student but never transferred
on."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from semalign.models import save_hf_dir
from semalign.store import open_store
from semalign.testing import tiny_model, tiny_tokenizer
from tiny_project import ROOT, ran_stages, run, stage_args

TEACHER_SIDE = {"materialize@teacher", "bases@teacher", "data@mmlu", "attribute@mmlu", "cache@mmlu"}
TRANSFER = {
    f"{stage}@mmlu-{objective}"
    for stage in ("train", "evaluate_transfer", "agree_transfer")
    for objective in ("v1", "sft")
}
STUDENT_SIDE = {"pair@mmlu", "align@mmlu", "table", "cka@mmlu", "report"} | TRANSFER
EVALUATED = {"evaluate@mmlu-student", "evaluate@mmlu-teacher", "agree@mmlu-student"}
BASELINES = {"seeking@mmlu", "laten@mmlu"} | {
    f"{stage}@mmlu-{method}"
    for stage in ("evaluate_baseline", "agree_baseline")
    for method in ("seeking", "laten")
}
EVALUATION_ONLY = {"data@asdiv", "evaluate@asdiv-student", "evaluate@asdiv-teacher"}  # every asdiv stage
SOURCES = {"source@teacher", "source@student"}  # hash the models outside the repo: run on every repro


@pytest.fixture(scope="module")
def project(reproduced) -> Path:
    return reproduced.repo


def test_repro_runs_every_stage_then_student_changes_reuse_the_teacher_work(reproduced, project):
    first = ran_stages(reproduced.output)
    assert first >= TEACHER_SIDE | STUDENT_SIDE | EVALUATED | BASELINES | EVALUATION_ONLY
    stages = set(run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], project).split())
    assert {stage for stage in stages if "asdiv" in stage} == EVALUATION_ONLY  # no transfer stage for asdiv
    assert not any("asdiv" in stage for stage in first - EVALUATION_ONLY)
    assert json.loads((project / "metrics/data/asdiv.json").read_text())["evaluation_only"] is True
    asdiv = json.loads((project / "metrics/eval/asdiv/teacher.json").read_text())
    assert asdiv["n"] == 2 and {"strict_accuracy", "truncated_share"} <= set(asdiv)
    assert (project / "data/cache/mmlu/training.zarr/manifest.json").is_file()
    assert (project / "data/targets/mmlu/training.zarr/manifest.json").is_file()
    assert all(
        (project / f"data/adapters/mmlu/{o}/adapter_model.safetensors").is_file() for o in ("v1", "sft")
    )
    metrics = json.loads((project / "metrics/align/mmlu.json").read_text())
    assert set(metrics["fidelity_mean_over_layers"]["teacher"]) == {"head", "head_normed", "input", "random"}
    tables = json.loads((project / "metrics/table.json").read_text())
    assert tables["protocols"] == ["lm_eval", "chat"]  # MMLU under both; asdiv under chat only
    headline, chat = tables["tables"]["lm_eval"], tables["tables"]["chat"]
    assert {"student", "teacher", "v1", "sft", "seeking", "laten"} <= set(headline["variants"])
    assert set(headline["paired_vs_sft"]) == {"v1", "seeking", "laten"}
    assert {"gold_logprob_diff", "gold_logprob_mdd", "mdd"} <= set(
        headline["paired_vs_student"]["v1"]["mmlu"]
    )
    for method in ("seeking", "laten"):
        assert (project / f"data/adapters/mmlu/{method}/delta.safetensors").is_file()
        layers = json.loads((project / f"metrics/{method}/mmlu.json").read_text())["teacher_layers"]
        assert (
            len(layers) == 3 and layers == sorted(set(layers)) and set(layers) <= {1, 2, 3, 4}
        )  # student depth 3
        assert headline["rows"][method]["mmlu"]["n"] == chat["rows"][method]["mmlu"]["n"] == 4
    assert headline["tasks"] == ["mmlu"] and chat["tasks"] == ["mmlu", "asdiv"]
    assert set(chat["rows"]["teacher"]) == {"mmlu", "asdiv"} and set(chat["rows"]["v1"]) == {"mmlu"}
    assert "asdiv" not in chat["gap_closed"]["v1"]
    agreement = tables["agreement"]["mmlu"]
    assert list(agreement) == ["student", "laten", "seeking", "sft", "v1"]
    assert all(
        agreement[v]["n"] == 4 and "kl_gap_closed" in agreement[v]["vs_student"] for v in list(agreement)[1:]
    )
    assert json.loads((project / "metrics/agreement/mmlu/v1.json").read_text())["kl"] == agreement["v1"]["kl"]
    assert "Teacher agreement, mmlu" in (project / "report/table.md").read_text()
    assert set(open_store(project / "data/cache/mmlu/agreement.zarr").arrays) == {
        "topk_logprobs",
        "topk_ids",
        "rest_logmass",
    }
    cka = json.loads((project / "metrics/cka/mmlu.json").read_text())
    assert cka["depth_map"] == [1, 2, 4] and len(cka["v1_contribution_aligned"]["best_teacher_layer"]) == 3
    assert len(cka["before_residual_raw"]["best_teacher_layer"]) == 3
    html = (project / "report/index.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((project / "plots").rglob("*.png"))) >= 6
    assert "plots/cka/mmlu.png" in html and (project / "report/README.md").is_file()

    held_out = metrics["held_out"]
    assert set(held_out["mean_all_layers"]) == {"semantic", "ridge", "procrustes", "random"}
    assert held_out["fit_examples"] + held_out["held_out_examples"] == 4
    assert json.loads((project / "metrics/train/mmlu/v1.json").read_text())["held_out_examples"] == 2

    fold = json.loads((project / "metrics/fold.json").read_text())["vocabulary"]
    assert fold["identical"] and fold["share"] == 1.0 and fold["shared"] == fold["teacher_rows"]

    # sft reads no targets: with the trained layers unchanged it retrains to the very same adapter bytes, so
    # DVC reuses its evaluation. The v2 window changes only the v2 pairing, and a second latent map adds
    # targets beside the semantic ones: v1 retrains to the same bytes too.
    same_bytes = {"align@mmlu", "train@mmlu-v1", "train@mmlu-sft", "report"}
    added = ["v2", "v1-ridge", "kd", "sft-s1"]  # variant names with a map, a seed, the kd baseline
    changes = {
        "pair": ({"window": 1}, {"pair@mmlu"} | same_bytes),
        "align": ({"maps": ["semantic", "ridge"]}, same_bytes),
        # adding variants trains and evaluates only the new ones
        "train": (
            {"objectives": ["v1", "sft", *added]},
            {
                f"{stage}@mmlu-{variant}"
                for stage in ("train", "evaluate_transfer", "agree_transfer")
                for variant in added
            }
            | {"table", "cka@mmlu", "report"},
        ),
    }
    for key, (value, expected) in changes.items():
        params = yaml.safe_load((project / "params.yaml").read_text())
        params[key].update(value)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        output = run([sys.executable, "-m", "dvc", "repro"], project)
        assert ran_stages(output) == expected | SOURCES, output
        for stage in (
            TEACHER_SIDE | EVALUATED | BASELINES | EVALUATION_ONLY | (TRANSFER if key == "train" else set())
        ):
            assert f"Stage '{stage}' didn't change, skipping" in output
    assert (project / "data/adapters/mmlu/v2/adapter_model.safetensors").is_file()
    targets = open_store(project / "data/targets/mmlu/training.zarr")
    assert targets.manifest["maps"] == ["semantic", "ridge"]
    assert {name.split("_")[0] for name in targets.arrays} == {"semantic", "ridge"}
    trained = {v: json.loads((project / f"metrics/train/mmlu/{v}.json").read_text()) for v in added}
    assert (trained["v1-ridge"]["kind"], trained["v1-ridge"]["map"], trained["v1-ridge"]["pairing"]) == (
        "v1",
        "ridge",
        "v1",
    )
    assert (trained["kd"]["kind"], trained["kd"]["map"], trained["sft-s1"]["seed"]) == ("kd", None, 1)
    adapters = {
        v: load_file(project / f"data/adapters/mmlu/{v}/adapter_model.safetensors")
        for v in ("v1", "v1-ridge", "sft", "sft-s1", "kd")
    }
    for a, b in (("v1", "v1-ridge"), ("sft", "sft-s1"), ("sft", "kd")):
        assert any(not torch.equal(adapters[a][n], adapters[b][n]) for n in adapters[a]), (a, b)
    headline = json.loads((project / "metrics/table.json").read_text())["tables"]["lm_eval"]
    assert set(added) <= set(headline["variants"])
    # v2 trains on its own selection, shallow to deep, one frontier layer per phase; v1 keeps the depth map
    pairs = json.loads((project / "data/pairs/mmlu.json").read_text())
    v2 = json.loads((project / "metrics/train/mmlu/v2.json").read_text())
    assert v2["pairing"] == "v2" and len(v2["phases"]) >= 2
    frontier = [p["student_layers"] for p in v2["phases"]]
    assert frontier == [[k] for k in v2["trained_layers"]] and v2["trained_layers"] == sorted(
        v2["trained_layers"]
    )
    selection = [p["teacher_layer"] for p in pairs["v2"]["layers"]]
    assert [p["teacher_layers"] for p in v2["phases"]] == [[selection[k - 1]] for k in v2["trained_layers"]]
    assert sum(p["steps"] for p in v2["phases"]) == v2["steps"] and all(p["steps"] >= 1 for p in v2["phases"])
    assert [p["teacher_layer"] for p in pairs["v1"]["layers"]] == [1, 2, 4]  # the depth map


def test_training_runs_with_the_teacher_weights_gone(project):
    teacher = project / "data/models/teacher"
    hidden = project / "teacher-away"
    teacher.rename(hidden)
    try:
        run([sys.executable, *stage_args("train", task="mmlu", objective="v1")], project)
    finally:
        hidden.rename(teacher)


def _store_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _chunks_computed(project: Path) -> dict[str, int]:
    splits = json.loads((project / "metrics/cache/mmlu.json").read_text())["splits"]
    return {split: metrics["chunks_computed"] for split, metrics in splits.items()}


def test_a_damaged_cache_is_named_by_its_reader_and_repaired_by_the_advised_command(project):
    alignment, training = (project / f"data/cache/mmlu/{split}.zarr" for split in ("alignment", "training"))
    clean = {store: _store_files(store) for store in (alignment, training)}

    (alignment / "dh_01" / "c.0.0.0").unlink()  # read as zeros before chunks were verified
    failed = subprocess.run(
        [sys.executable, "stages/align.py", "--task", "mmlu"],
        cwd=project,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1] == (
        "semalign.errors.SemalignError: store data/cache/mmlu/alignment.zarr: chunk 0 of array 'dh_01' is "
        "missing (no file dh_01/c.0.0.0); rebuild it with `dvc repro -f cache@mmlu` (it recomputes the bad "
        "chunks)"
    )
    run([sys.executable, "-m", "dvc", "repro", "-f", "cache@mmlu"], project)
    assert _chunks_computed(project) == {"alignment": 1, "training": 0, "agreement": 0}
    assert _store_files(alignment) == clean[alignment]

    chunk = training / "topk_logprobs" / "c.1.0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated: a zstd error before chunks were verified
    output = run([sys.executable, "-m", "dvc", "repro", "cache@mmlu"], project)
    # DVC sees the damaged out (source@ hashes the models on every repro); the rerun recomputes one chunk
    assert ran_stages(output) - SOURCES == {"cache@mmlu"}
    assert _chunks_computed(project) == {"alignment": 0, "training": 1, "agreement": 0}
    assert _store_files(training) == clean[training]
    status = run([sys.executable, "-m", "dvc", "status", "align@mmlu"], project)
    assert "Data and pipelines are up to date." in status  # the repaired cache is the one align used


def test_the_teacher_against_its_own_cached_agreement_split_has_kl_0_and_agrees_everywhere(project):
    args = stage_args("agree", task="mmlu", variant="teacher")
    args[args.index("--model") + 1] = "data/models/teacher"  # the teacher in the student's place
    run([sys.executable, *args], project)
    summary = json.loads((project / "metrics/agreement/mmlu/teacher.json").read_text())
    for out in ("metrics/agreement/mmlu/teacher.json", "data/agreement/mmlu/teacher.jsonl"):
        (project / out).unlink()  # not a pipeline output: the project stays as `dvc repro` left it
    assert summary["n"] == 4 and summary["kl"] == pytest.approx(0.0, abs=1e-6) and summary["top1"] == 1.0
    student = json.loads((project / "metrics/agreement/mmlu/student.json").read_text())
    assert student["kl"] > 1e-4 and student["tokens"] == summary["tokens"]


def test_student_side_stages_never_depend_on_teacher_weights():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("pair", "fold", "align", "train", "evaluate_transfer", "cka", "agree", "agree_transfer"):
        deps = stages[name].get("do", stages[name])["deps"]
        assert "data/models/teacher" not in deps, f"{name} must not load the teacher's weights"
    for name in ("seeking", "laten"):  # the baselines move parameters: they must say they read the teacher
        deps = stages[name]["do"]["deps"]
        assert {"data/models/teacher", "data/models/student"} <= set(deps), name
    for name in ("data", "attribute", "cache"):
        params = stages[name]["do"]["params"]
        assert not any(str(p).startswith(("models.student", "pair", "align", "train")) for p in params), name


def test_transfer_stages_run_on_transfer_tasks_and_data_and_evaluation_on_every_task():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("attribute", "cache", "pair", "align", "seeking", "laten"):
        assert stages[name]["foreach"] == "${transfer.tasks}", name
    for name in (
        "train",
        "evaluate_transfer",
        "evaluate_baseline",
        "agree",
        "agree_transfer",
        "agree_baseline",
    ):
        assert stages[name]["matrix"]["task"] == "${transfer.tasks}", name
    assert stages["data"]["foreach"] == "${data.tasks}"
    assert stages["evaluate"]["matrix"]["task"] == "${data.tasks}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tasks = params["data"]["tasks"]
    for task in params["transfer"]["tasks"]:  # every transfer task has the splits its stages read
        splits = ("attribution", "alignment", "training", "agreement")
        assert all(tasks[task].get(split, 0) > 0 for split in splits), task
    assert {"asdiv", "humaneval"} <= set(tasks) - set(params["transfer"]["tasks"])
    assert set(params["evaluate"]["limit"]) >= set(tasks)  # each evaluated task has its size chosen
    assert set(params["evaluate"]["protocol"]) >= set(tasks)  # ... and its protocols
    assert params["evaluate"]["protocol"]["mmlu"] == "lm_eval"  # the headline (chat: one -S away)


def test_a_student_replaced_in_place_makes_materialize_out_of_date(project, tmp_path):
    """The model source lies outside the repo: `source@student` hashes it, so new weights at the same
    hf_dir path change materialize@student's dep, and the same weights hashed again change nothing."""
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "repro", "source@student"], project)
    assert "materialize@student" not in run([*dvc, "status", "materialize@student"], project)
    student = project / "models" / "student"
    shutil.copytree(student, tmp_path / "student")
    try:
        replaced = tiny_model(
            "qwen2", seed=7, num_layers=3, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64
        )
        save_hf_dir(replaced, tiny_tokenizer(), student)
        run([*dvc, "repro", "source@student"], project)
        status = run([*dvc, "status", "materialize@student"], project)
        assert "materialize@student" in status and "modified:" in status and "student.source.json" in status
    finally:
        shutil.rmtree(student)
        shutil.copytree(tmp_path / "student", student)
