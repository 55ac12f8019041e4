"""A tiny DVC project of semalign on random-initialised Qwen2 models, shared by the pipeline tests: the
repository is built once and reproduced once per test session (see conftest.py)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from semalign.models import save_hf_dir
from semalign.testing import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 360


def mmlu_rows(count: int) -> str:
    rows = []
    for i in range(count):
        letter = "ABCD"[i % 4]
        options = "\n".join(f"{x}. option {x.lower()} {i}" for x in "ABCD")
        rows.append(
            {
                "question": f"Question {i}: which option is right?",
                "options": options,
                "answer": f"{letter}. option {letter.lower()} {i}",
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows)


def tiny_params(models: Path, task_file: Path, eval_only_file: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"] = {
        role: {"source": "hf_dir", "path": str(models / role)} for role in ("teacher", "student")
    }
    params["bases"]["chunk_rows"] = 128
    params["data"].update(
        max_length=64,
        tasks={
            "mmlu": {
                "path": str(task_file),
                "evaluation": 4,
                "attribution": 4,
                "alignment": 4,
                "training": 8,
                "agreement": 4,
            },
            "asdiv": {"path": str(eval_only_file), "evaluation": 3},
        },
    )
    params["transfer"] = {"tasks": ["mmlu"]}
    # float32 forward: the teacher scored against its own cache must give KL 0 exactly (the agreement check)
    params["cache"].update(top_k=4, batch_size=2, forward_dtype="float32")
    params["agree"]["batch_size"] = 2  # the cache's batches: the teacher against its own cache is exact
    params["align"]["chunk_rows"] = 128
    # no LoRA dropout and float32: training under torchrun then makes the very adapters one process makes
    params["train"].update(
        objectives=["v1", "sft"],
        epochs=1,
        batch_size=4,
        micro_batch_size=2,
        lora_dropout=0.0,
        dtype="float32",
    )
    # one item a batch: every evaluation has several batches, so two ranks under torchrun both get work;
    # MMLU under both protocols, so that the secondary tables are built
    params["evaluate"].update(batch_size=1, limit={"mmlu": 4, "asdiv": 2}, max_new_tokens={"asdiv": 8})
    params["evaluate"]["protocol"]["mmlu"] = ["lm_eval", "chat"]
    params["seeking"].update(lora_r=4, epochs=1, batch_size=4, micro_batch_size=2)
    params["laten"].update(neuron_fraction=0.25, steps=2, batch_size=2)
    return params


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def stage_args(name: str, **item: str) -> list[str]:
    """The script and arguments of dvc.yaml stage `name` for one `item` (`${item}` or `${item.<key>}`), so
    that a test running a stage by hand runs it exactly as `dvc repro` does."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    cmd = stage.get("do", stage)["cmd"]
    for key, value in item.items():
        cmd = cmd.replace("${item." + key + "}", value).replace("${" + key + "}", value)
    python, *args = shlex.split(cmd)
    assert python == "python" and "${" not in cmd, cmd
    return args


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def build_project(repo: Path) -> Path:
    """A git + DVC repository at `repo` with this checkout's stages and library, two tiny Qwen2 models
    (teacher 4 layers d 48, student 3 layers d 32), 24 MMLU rows (every one in a split) and the 4-item ASDiv
    fixture."""
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "stages", repo / "stages")
    shutil.copytree(ROOT / "lib", repo / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # 360: the smallest tiny vocabulary in which " A" .. " D" are single tokens (MMLU's lm_eval protocol)
    tokenizer = tiny_tokenizer(VOCAB)
    save_hf_dir(
        tiny_model("qwen2", seed=1, num_layers=4, hidden_size=48, vocab_size=VOCAB),
        tokenizer,
        repo / "models" / "teacher",
    )
    save_hf_dir(
        tiny_model(
            "qwen2",
            seed=2,
            num_layers=3,
            hidden_size=32,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=64,
            vocab_size=VOCAB,
        ),
        tokenizer,
        repo / "models" / "student",
    )
    (repo / "mmlu.jsonl").write_text(mmlu_rows(24))
    shutil.copy(ROOT / "tests/fixtures/asdiv.jsonl", repo / "asdiv.jsonl")  # 4 usable items
    (repo / "params.yaml").write_text(
        yaml.safe_dump(tiny_params(repo / "models", repo / "mmlu.jsonl", repo / "asdiv.jsonl"))
    )
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    return repo
