"""Stores at fsspec URLs (an in-memory file system and S3 on a local moto server): written, resumed after a
crash, shared by two ranks, rebuilt and read exactly like local ones; the pipeline reaches them through link
files at its local paths."""

import json
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from semalign.errors import SemalignError
from semalign.location import Location
from semalign.store import ArraySpec, StoreWriter, link_store, open_store, placed_store
from tiny_project import ROOT

ARRAYS = {"x": ArraySpec((7, 3, 2), "bfloat16", 2), "n": ArraySpec((7,), "int64", 4)}


def data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"x": torch.randn(7, 3, 2, generator=generator).bfloat16(), "n": torch.arange(7) * 11}


def write(
    writer: StoreWriter, values: dict[str, torch.Tensor], only: dict[str, list[int]] | None = None
) -> None:
    for name, spec in ARRAYS.items():
        for chunk in (only or {}).get(name, range(spec.num_chunks)):
            start, stop = spec.rows(chunk)
            writer.write_chunk(name, chunk, values[name][start:stop])


@pytest.fixture(params=["memory", "s3"])
def url(request) -> str:
    """A fresh store URL on each kind of file system."""
    base = "memory://semalign" if request.param == "memory" else request.getfixturevalue("s3_bucket")
    return f"{base}/{uuid.uuid4().hex}/s.zarr"


def test_store_at_a_url_resumes_after_a_crash_and_reads_back_exactly(url):
    values = data()
    crashed = StoreWriter(url, ARRAYS, "fp")
    write(crashed, values, only={"x": [0, 2], "n": [1]})  # then the process dies: no finalize
    with pytest.raises(SemalignError, match="incomplete"):
        open_store(url)

    with StoreWriter(url, ARRAYS, "fp") as writer:
        assert writer.pending_chunks("x") == [1, 3] and writer.pending_chunks("n") == [0]
        with pytest.raises(SemalignError, match="missing chunks"):
            writer.finalize({})
        write(writer, values, only={"x": [1, 3], "n": [0]})
        assert writer.finalize({"note": 1})["note"] == 1
    store = open_store(url)
    assert store.manifest["fingerprint"] == "fp"
    for name, tensor in values.items():
        assert torch.equal(
            store.read(name).view(torch.int16 if name == "x" else torch.int64),
            tensor.view(torch.int16 if name == "x" else torch.int64),
        )
    assert torch.equal(
        store.read_selection("x", torch.tensor([6, 0, 3])).float(), values["x"][[6, 0, 3]].float()
    )
    journal = [json.loads(line) for line in store.location.read_text("progress.jsonl").splitlines()]
    assert sorted((e["array"], e["chunk"]) for e in journal) == [
        ("n", 0),
        ("n", 1),
        ("x", 0),
        ("x", 1),
        ("x", 2),
        ("x", 3),
    ]


def test_two_ranks_write_one_store_at_a_url(url):
    values = data()
    zero = StoreWriter(url, ARRAYS, "fp")
    one = StoreWriter(url, ARRAYS, "fp", rank=1)
    write(zero, values, only={"x": [0, 2], "n": [0]})
    write(one, values, only={"x": [1, 3], "n": [1]})
    zero.finalize({})
    store = open_store(url)
    assert torch.equal(store.read("n"), values["n"]) and torch.equal(
        store.read("x").float(), values["x"].float()
    )
    assert store.location.glob("progress*.jsonl") == ["progress.1.jsonl", "progress.jsonl"]


def test_changed_fingerprint_rebuilds_the_store_at_a_url(url):
    with StoreWriter(url, ARRAYS | {"old": ArraySpec((2,), "int32", 2)}, "old") as writer:
        writer.write_chunk("old", 0, torch.ones(2, dtype=torch.int32))
    with StoreWriter(url, ARRAYS, "new") as writer:
        assert writer.pending_chunks("x") == [0, 1, 2, 3]
        write(writer, data())
        writer.finalize({})
    location = Location.of(url)
    assert "old" not in location.entries() and not location.glob("*.tmp")
    assert open_store(url).manifest["fingerprint"] == "new"


def test_a_directory_that_is_not_a_store_is_never_removed(url):
    location = Location.of(url)
    location.fs.mkdirs(location.root, exist_ok=True)
    location.write_atomic("notes.txt", "keep me")
    with pytest.raises(SemalignError, match="is not a store"):
        StoreWriter(url, ARRAYS, "fp")
    assert location.read_text("notes.txt") == "keep me"


def test_local_path_links_to_the_placed_store(tmp_path, s3_bucket):
    local = tmp_path / "data/cache/mmlu/training.zarr"
    assert placed_store(local, "", "ab" * 32) == local
    placed = placed_store(Path("data/cache/mmlu/training.zarr"), s3_bucket + "/team/", "ab" * 32)
    assert placed == f"{s3_bucket}/team/data/cache/mmlu/training-{'ab' * 8}.zarr"

    with StoreWriter(local, ARRAYS, "fp-local") as writer:  # an earlier run kept the store locally
        write(writer, data())
        writer.finalize({})
    with StoreWriter(placed, ARRAYS, "fp") as writer:
        write(writer, data())
        manifest = writer.finalize({})
    link_store(local, placed, manifest)
    assert not local.exists(), "the local copy the link replaces is removed"
    assert open_store(local).location.url == placed
    assert torch.equal(open_store(local).read("n"), data()["n"])

    link = local.with_name("training.zarr.link.json")
    link.write_text(json.dumps({"url": placed, "fingerprint": "another"}))
    with pytest.raises(SemalignError, match="holds other data than the link records"):
        open_store(local)

    with StoreWriter(local, ARRAYS, "fp") as writer:  # back to local stores: the link goes
        write(writer, data())
        link_store(local, local, writer.finalize({}))
    assert not link.exists() and open_store(local).location.url == str(local)


def test_unknown_protocol_names_the_fix():
    with pytest.raises(SemalignError, match="install the fsspec backend"):
        StoreWriter("nosuchfs://bucket/s.zarr", ARRAYS, "fp")


def test_no_stage_depends_on_a_store_path_that_may_be_a_link():
    """With stores.url set, data/cache/<task>/<split>.zarr is a link file beside a missing directory: stages
    must depend on the out directory that holds either."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = [dep for stage in stages.values() for dep in stage.get("do", stage).get("deps", [])]
    assert "data/cache/${item}" in deps
    assert not [dep for dep in deps if dep.startswith(("data/cache/", "data/targets/")) and ".zarr" in dep]


def test_damaged_chunks_at_a_url_are_named_and_recomputed_whichever_rank_journaled_them(url):
    values, rebuild = data(), "dvc repro -f cache@mmlu"
    zero = StoreWriter(url, ARRAYS, "fp", rebuild=rebuild)
    one = StoreWriter(url, ARRAYS, "fp", rank=1, rebuild=rebuild)
    write(zero, values, only={"x": [0, 2], "n": [0]})
    write(one, values, only={"x": [1, 3], "n": [1]})
    zero.finalize({})
    location = Location.of(url)
    location.fs.rm_file(location.child("x/c.1.0.0"))  # journaled by rank 1
    location.fs.pipe_file(location.child("n/c.0"), b"\x28\xb5\x2f\xfd cut")  # rank 0's, no longer zstd
    store = open_store(url)
    with pytest.raises(SemalignError) as err:
        store.read("x")
    assert str(err.value) == (
        f"store {url}: chunk 1 of array 'x' is missing (no file x/c.1.0.0); rebuild it with `{rebuild}` (it "
        "recomputes the bad chunks)"
    )
    with pytest.raises(SemalignError, match=r"^store \S+: chunk 0 of array 'n' is unreadable \(.*; rebuild"):
        store.read_rows("n", 0, 1)

    with StoreWriter(url, ARRAYS, "fp", rebuild=rebuild) as writer:  # the rerun, now in one process
        assert writer.pending_chunks("x") == [1] and writer.pending_chunks("n") == [0]
        write(writer, values, only={"x": [1], "n": [0]})
        writer.finalize({})
    rank_1 = [json.loads(line) for line in location.read_text("progress.1.jsonl").splitlines()]
    assert [(e["array"], e["chunk"]) for e in rank_1] == [("n", 1), ("x", 3)]  # its bad chunk was dropped
    store = open_store(url)
    assert torch.equal(store.read("n"), values["n"])
    assert torch.equal(store.read("x").view(torch.int16), values["x"].view(torch.int16))
