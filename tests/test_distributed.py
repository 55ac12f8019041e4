"""Data parallelism under torchrun: `cache`, `align` and `evaluate` in 2 CPU processes (gloo) write the same
stores (kept in S3 on a local moto server, reached through link files) and results as one process, and
`train` (FSDP: the student sharded, only rank 0 reading its weights) the same adapters; a store written by
several ranks journals per rank, resumes whatever the
number of processes, and is only ever created by rank 0."""

import json
import os
import runpy
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from semalign.distributed import Shard
from semalign.errors import SemalignError
from semalign.evaluation.results import ItemResult, read_results
from semalign.evaluation.runner import EvalConfig, merge_results, results_header
from semalign.store import ArraySpec, StoreWriter, open_store
from semalign.tasks import TaskItem
from tiny_project import ROOT, run, stage_args

STORES = [
    f"data/{kind}/mmlu/{split}.zarr" for kind in ("cache", "targets") for split in ("alignment", "training")
] + ["data/cache/mmlu/agreement.zarr"]
EVALUATED = (("mmlu", "teacher"), ("asdiv", "student"))


@pytest.fixture(scope="module")
def single(reproduced) -> Path:
    """The tiny project as one process reproduced it, with several chunks and batches per split so that two
    ranks both get work."""
    return reproduced.pristine


def torchrun(args: list[str], cwd: Path) -> str:
    return run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args], cwd
    )


def test_two_processes_write_what_one_process_writes(single, tmp_path, s3_bucket):
    multi = tmp_path / "multi"
    shutil.copytree(single, multi, ignore=shutil.ignore_patterns(".dvc", ".git"))
    for out in (
        "data/cache",
        "data/targets",
        "data/eval",
        "data/adapters",
        "metrics/cache",
        "metrics/align",
        "metrics/eval",
        "metrics/train",
        "plots/train",
    ):
        shutil.rmtree(multi / out)
    params = yaml.safe_load((multi / "params.yaml").read_text())
    params["stores"]["url"] = f"{s3_bucket}/team"
    params["train"]["parallel"] = "fsdp"  # DDP in two processes: tests/student/test_training.py
    (multi / "params.yaml").write_text(yaml.safe_dump(params))
    torchrun(stage_args("cache", item="mmlu"), multi)
    torchrun(["stages/align.py", "--task", "mmlu"], multi)
    torchrun(stage_args("train", task="mmlu", objective="v1"), multi)
    for task, variant in EVALUATED:
        torchrun(stage_args("evaluate", task=task, variant=variant), multi)

    for store in STORES:
        one, two = open_store(single / store), open_store(multi / store)
        assert one.manifest == two.manifest, store
        assert one.arrays and set(one.arrays) == set(two.arrays)
        for name in one.arrays:
            assert torch.equal(one.read(name), two.read(name)), f"{store}/{name}"
        assert two.location.url.startswith(f"{s3_bucket}/team/{Path(store).with_suffix('')}-")
        assert not (multi / store).exists() and (multi / f"{store}.link.json").is_file()
        assert two.location.read_text("progress.1.jsonl"), f"rank 1 wrote no chunk of {store}"
    cache_one = json.loads((single / "metrics/cache/mmlu.json").read_text())["splits"]
    cache_two = json.loads((multi / "metrics/cache/mmlu.json").read_text())["splits"]
    assert [s["chunks_computed"] for s in cache_two.values()] == [
        s["chunks_computed"] for s in cache_one.values()
    ]
    align_one = json.loads((single / "metrics/align/mmlu.json").read_text())
    assert json.loads((multi / "metrics/align/mmlu.json").read_text()) == align_one

    adapter = Path("data/adapters/mmlu/v1/adapter_model.safetensors")
    one, two = load_file(single / adapter), load_file(multi / adapter)
    assert set(one) == set(two) and one
    for name in one:  # the two ranks' accumulated gradients are averaged: equal up to float summation order
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    steps_one, steps_two = (
        json.loads((repo / "plots/train/mmlu/v1.json").read_text()) for repo in (single, multi)
    )
    assert len(steps_two) == len(steps_one) == 2
    for a, b in zip(steps_one, steps_two):
        assert b["step"] == a["step"] and b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert json.loads((multi / "metrics/train/mmlu/v1.json").read_text())["processes"] == 2

    for task, variant in EVALUATED:
        folder = Path("data/eval") / task / variant
        protocols = sorted(path.name for path in (single / folder).glob("*.jsonl"))
        assert protocols == (["chat.jsonl", "lm_eval.jsonl"] if task == "mmlu" else ["chat.jsonl"])
        for protocol in protocols:
            one = {r.item_id: r for r in read_results(single / folder / protocol)}
            two = read_results(multi / folder / protocol)
            assert len(two) == len(one) > 1 and {r.item_id: r for r in two} == one, (task, protocol)
        assert not list((multi / folder).glob("*.rank*")), "rank files are merged away"
        one_metrics, two_metrics = (
            json.loads((repo / "metrics/eval" / task / f"{variant}.json").read_text())
            for repo in (single, multi)
        )
        assert {k: two_metrics[k] for k in ("accuracy", "n")} == {
            k: one_metrics[k] for k in ("accuracy", "n")
        }
        assert two_metrics["protocols"].keys() == one_metrics["protocols"].keys()


def specs() -> dict[str, ArraySpec]:
    return {"x": ArraySpec((6, 3), "float32", 2)}


def test_store_written_by_two_ranks_resumes_in_one_process(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(SemalignError, match="not created by rank 0"):
        StoreWriter(path, specs(), "f", rank=1)
    data = torch.arange(18, dtype=torch.float32).reshape(6, 3)
    zero = StoreWriter(path, specs(), "f")
    one = StoreWriter(path, specs(), "f", rank=1)
    one.write_chunk("x", 1, data[2:4])  # rank 1's chunk; rank 0 never sees it being written
    zero.write_chunk("x", 0, data[0:2])
    with pytest.raises(SemalignError, match="missing chunks"):
        zero.finalize({})
    one.close()
    zero.close()
    # A single process picks up both ranks' journals and computes only the last chunk.
    resumed = StoreWriter(path, specs(), "f")
    assert resumed.pending_chunks("x") == [2]
    resumed.write_chunk("x", 2, data[4:6])
    resumed.finalize({})
    resumed.close()
    assert torch.equal(open_store(path).read("x"), data)


def test_a_rank_opens_only_the_store_rank_0_made(tmp_path):
    path = tmp_path / "s.zarr"
    with StoreWriter(path, specs(), "old") as writer:
        writer.write_chunk("x", 0, torch.ones(2, 3))
    with pytest.raises(SemalignError, match="not created by rank 0 with this spec"):
        StoreWriter(
            path, specs(), "new", rank=1
        )  # only rank 0 may rebuild a store, before the others open it
    with StoreWriter(path, specs(), "old") as writer:  # untouched: its chunk is still there
        assert writer.pending_chunks("x") == [1, 2]


def test_shards_deal_units_round_robin_and_cover_them_once():
    units = list(range(7))
    shards = [Shard(rank, 3) for rank in range(3)]
    taken = [shard.take(units) for shard in shards]
    assert taken == [[0, 3, 6], [1, 4], [2, 5]]
    assert all(shard.owns(u) == (u in t) for shard, t in zip(shards, taken) for u in units)
    with pytest.raises(SemalignError, match="not a valid shard"):
        Shard(3, 3)


def test_merge_refuses_results_no_rank_wrote(tmp_path):
    items = [TaskItem("mmlu", f"q{i}", "?", "A", ("a", "b", "c", "d")) for i in range(3)]
    config = EvalConfig()
    path = tmp_path / "student.jsonl"
    header = results_header("mmlu", config, "lm_eval")
    for rank, item in enumerate(items[:2]):  # the third item was scored by nobody
        result = ItemResult(item.item_id, True, "A")
        (tmp_path / f"student.jsonl.rank{rank}-of-2").write_text(
            json.dumps({"identity": header}) + "\n" + json.dumps(asdict(result)) + "\n"
        )
    with pytest.raises(SemalignError, match="scored by no rank"):
        merge_results("mmlu", items, config, "lm_eval", path, 2)
    assert os.path.exists(tmp_path / "student.jsonl.rank0-of-2"), "nothing is lost when the merge refuses"
    items = items[:2]
    merged = merge_results("mmlu", items, config, "lm_eval", path, 2)
    assert [r.item_id for r in merged] == ["q0", "q1"] == [r.item_id for r in read_results(path)]
    assert not list(tmp_path.glob("*.rank*"))


def test_cache_size_table_in_the_docs_is_the_scripts_output():
    script = runpy.run_path(str(ROOT / "bench/cache_sizes.py"))
    table = script["size_table"](yaml.safe_load((ROOT / "params.yaml").read_text()))
    document = (ROOT / "docs/scale-out.md").read_text()
    assert f"<!-- cache-sizes -->\n{table}\n" in document, (
        "rerun python bench/cache_sizes.py and paste its output"
    )
    # 41 bf16 states of width 5120 plus the top-64 distribution: the paper's 13B teacher at ~410 KiB a token
    assert "| Llama-2-13B (40 layers, d 5120) | 128 + 1000 (paper sizes) | 411 |" in table
