"""The store: lossless round trips, whole-chunk writes, resumption after a crash, refusal to read unfinished
stores, and a background writer that never hides a failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from semalign.errors import SemalignError
from semalign.store import (
    DTYPES,
    ArraySpec,
    BackgroundWriter,
    StoreWriter,
    chunk_checksum,
    from_storage,
    logical_dtype,
    non_finite,
    open_store,
    to_storage,
)

ROWS, CHUNK = 50, 16  # 4 chunks, the last one 2 rows short of full: exercises the short-chunk path


def _data(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(ROWS, 3, 5, generator=gen).to(dtype)
    return torch.randint(-(2**30), 2**30, (ROWS, 7), generator=gen).to(dtype)


def _write_all(writer: StoreWriter, name: str, data: torch.Tensor, chunks=None) -> None:
    spec = writer.arrays[name]
    for i in writer.pending_chunks(name) if chunks is None else chunks:
        start, stop = spec.rows(i)
        writer.write_chunk(name, i, data[start:stop])


def _files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64])
@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_roundtrip_is_bit_exact(tmp_path, dtype, codec):
    data = _data(dtype)
    with StoreWriter(
        tmp_path / "s", {"x": ArraySpec(data.shape, logical_dtype(dtype), CHUNK)}, "fp", codec
    ) as w:
        _write_all(w, "x", data)
        w.finalize({"model": "m"})
    store = open_store(tmp_path / "s")
    back = store.read("x")
    assert back.dtype == dtype and back.shape == data.shape
    # Bit patterns, not values: catches a bf16 path that goes through float and back.
    if dtype.itemsize == 2:
        assert torch.equal(back.view(torch.int16), data.view(torch.int16))
    assert torch.equal(back, data)
    assert torch.equal(store.read_rows("x", 13, 37), data[13:37])  # spans three chunks, partial at both ends
    assert store.manifest["model"] == "m" and store.manifest["fingerprint"] == "fp"
    want_spec = {"shape": list(data.shape), "dtype": logical_dtype(dtype), "chunk_rows": CHUNK}
    assert store.manifest["arrays"]["x"] == want_spec


def test_storage_helpers_keep_bf16_bits():
    t = torch.tensor([1.0, -0.0, float("inf"), 3.140625, 1e-40], dtype=torch.bfloat16)
    stored = to_storage(t)
    assert stored.dtype == np.uint16
    assert torch.equal(from_storage(stored, "bfloat16").view(torch.int16), t.view(torch.int16))


def test_short_last_chunk_and_wrong_shapes(tmp_path):
    data = _data(torch.float32)
    spec = ArraySpec(data.shape, "float32", CHUNK)
    assert spec.num_chunks == 4 and spec.rows(3) == (48, 50)
    with StoreWriter(tmp_path / "s", {"x": spec}, "fp") as w:
        with pytest.raises(SemalignError, match="expected"):
            w.write_chunk("x", 3, data[32:48])  # a full chunk where the short one belongs
        with pytest.raises(SemalignError, match="expected"):
            w.write_chunk("x", 0, data[:16].double())
        with pytest.raises(SemalignError, match="out of range"):
            w.write_chunk("x", 4, data[:2])
        with pytest.raises(SemalignError, match="no array"):
            w.pending_chunks("y")


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    a, b = _data(torch.float32, 1), _data(torch.bfloat16, 2)
    arrays = {"a": ArraySpec(a.shape, "float32", CHUNK), "b": ArraySpec(b.shape, "bfloat16", CHUNK)}

    with StoreWriter(tmp_path / "clean", arrays, "fp") as w:
        _write_all(w, "a", a)
        _write_all(w, "b", b)
        w.finalize({"k": 1})

    crashed = tmp_path / "crashed"
    w = StoreWriter(crashed, arrays, "fp")
    _write_all(w, "a", a, chunks=[0, 2])
    _write_all(w, "b", b, chunks=[1])
    # chunk 1 of "a" reached the disk (with wrong data) but the crash came before its journal line
    zarr.open_group(crashed, mode="r+")["a"][16:32] = to_storage(torch.zeros(16, 3, 5))
    # and a journal update torn by it: the half-written replacement never took the journal's place
    (crashed / "progress.jsonl.tmp").write_text('{"array": "a", "chunk": 0}\n{"array": "a", "ch')
    del w  # no finalize

    with pytest.raises(SemalignError, match="incomplete"):
        open_store(crashed)

    with StoreWriter(crashed, arrays, "fp") as w:
        assert w.pending_chunks("a") == [1, 3]
        assert w.pending_chunks("b") == [0, 2, 3]
        with pytest.raises(SemalignError, match="missing chunks"):
            w.finalize({"k": 1})
        _write_all(w, "a", a)
        _write_all(w, "b", b)
        w.finalize({"k": 1})

    clean_files, crashed_files = _files(tmp_path / "clean"), _files(crashed)
    assert clean_files == crashed_files  # every chunk, journal and metadata file byte-identical
    assert torch.equal(open_store(crashed).read("a"), a)


def test_reopen_of_finished_store_has_nothing_pending(tmp_path):
    data = _data(torch.float32)
    arrays = {"x": ArraySpec(data.shape, "float32", CHUNK)}
    with StoreWriter(tmp_path / "s", arrays, "fp") as w:
        _write_all(w, "x", data)
        w.finalize({})
    with StoreWriter(tmp_path / "s", arrays, "fp") as w:
        assert w.pending_chunks("x") == []
        w.finalize({})
    assert torch.equal(open_store(tmp_path / "s").read("x"), data)


@pytest.mark.parametrize("change", ["fingerprint", "shape", "chunk_rows", "codec"])
def test_changed_spec_recreates_the_store(tmp_path, caplog, change):
    data = _data(torch.float32)
    arrays = {"x": ArraySpec(data.shape, "float32", CHUNK)}
    with StoreWriter(tmp_path / "s", arrays, "fp") as w:
        _write_all(w, "x", data, chunks=[0, 1])
    new_arrays, fingerprint, codec = arrays, "fp", "zstd"
    if change == "fingerprint":
        fingerprint = "other model"
    elif change == "shape":
        new_arrays = {"x": ArraySpec((ROWS + 1, 3, 5), "float32", CHUNK)}
    elif change == "chunk_rows":
        new_arrays = {"x": ArraySpec(data.shape, "float32", CHUNK * 2)}
    else:
        codec = "none"
    with StoreWriter(tmp_path / "s", new_arrays, fingerprint, codec) as w:
        assert w.pending_chunks("x") == list(range(new_arrays["x"].num_chunks))
    assert "recreating" in caplog.text
    assert not (tmp_path / "s.stale").exists()


def test_open_store_errors(tmp_path):
    with pytest.raises(SemalignError, match="does not exist"):
        open_store(tmp_path / "nowhere")
    data = _data(torch.float32)
    with StoreWriter(tmp_path / "s", {"x": ArraySpec(data.shape, "float32", CHUNK)}, "fp") as w:
        _write_all(w, "x", data)
        w.finalize({})
    (tmp_path / "s" / "x" / "zarr.json").write_text("{not json")
    with pytest.raises(SemalignError, match="corrupt"):
        open_store(tmp_path / "s")


def test_refuses_to_replace_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SemalignError, match="not a store"):
        StoreWriter(tmp_path / "mine", {"x": ArraySpec((4, 2), "float32", 2)}, "fp")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_manifest_cannot_overwrite_store_keys(tmp_path):
    with StoreWriter(tmp_path / "s", {"x": ArraySpec((2, 2), "float32", 2)}, "fp") as w:
        w.write_chunk("x", 0, torch.ones(2, 2))
        with pytest.raises(SemalignError, match="reserved"):
            w.finalize({"fingerprint": "forged"})


def test_file_count_stays_small(tmp_path):
    rows, chunk = 100_000, 16_384
    arrays = {"x": ArraySpec((rows, 4), "float16", chunk), "y": ArraySpec((rows,), "int32", chunk)}
    with StoreWriter(tmp_path / "s", arrays, "fp") as w:
        for name, spec in arrays.items():
            for i in range(spec.num_chunks):
                start, stop = spec.rows(i)
                w.write_chunk(
                    name, i, torch.zeros(stop - start, *spec.shape[1:], dtype=DTYPES[spec.dtype][0])
                )
        w.finalize({})
    files = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    # one file per chunk (7 + 7), zarr.json for the group and each array, journal, manifest
    assert len(files) == 14 + 3 + 2
    with pytest.raises(SemalignError, match="raise chunk_rows"):
        StoreWriter(tmp_path / "t", {"x": ArraySpec((2_000, 4), "float32", 1)}, "fp")


@pytest.mark.parametrize("workers", [1, 4])
def test_background_writer_matches_direct_writes(tmp_path, workers):
    data = _data(torch.bfloat16)
    arrays = {"x": ArraySpec(data.shape, "bfloat16", CHUNK)}
    buffer = torch.empty(CHUNK, 3, 5, dtype=torch.bfloat16)
    with StoreWriter(tmp_path / "s", arrays, "fp") as w:
        with BackgroundWriter(w, maxsize=2, workers=workers) as bg:
            for i in range(arrays["x"].num_chunks):
                start, stop = arrays["x"].rows(i)
                buffer[: stop - start] = data[start:stop]
                bg.submit("x", i, buffer[: stop - start])  # the buffer is reused: submit must copy
        w.finalize({})
    assert torch.equal(open_store(tmp_path / "s").read("x").view(torch.int16), data.view(torch.int16))
    journal = (tmp_path / "s" / "progress.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["chunk"] for line in journal) == list(range(arrays["x"].num_chunks))


@pytest.mark.parametrize("workers", [1, 3])
def test_background_writer_raises_worker_errors(tmp_path, workers):
    arrays = {"x": ArraySpec((64, 2), "float32", 8)}
    with StoreWriter(tmp_path / "s", arrays, "fp") as w:
        bg = BackgroundWriter(w, maxsize=2, workers=workers)
        bg.submit("x", 0, torch.ones(8, 3))  # wrong width: fails in the worker thread
        with pytest.raises(SemalignError, match="expected"):
            for i in range(1, 8):  # keeps submitting until the failure surfaces; must not deadlock
                bg.submit("x", i, torch.ones(8, 2))
            bg.close()
        with pytest.raises(SemalignError, match="expected"):
            bg.close()  # still reported, never swallowed


def test_journal_lines_name_finished_chunks(tmp_path):
    with StoreWriter(tmp_path / "s", {"x": ArraySpec((4, 2), "float32", 2)}, "fp") as w:
        w.write_chunk("x", 1, torch.ones(2, 2))
    lines = (tmp_path / "s" / "progress.jsonl").read_text().splitlines()
    want = chunk_checksum(np.ones((2, 2), np.float32))
    assert [json.loads(line) for line in lines] == [{"array": "x", "chunk": 1, "xxh3": want}]


REBUILD = "dvc repro -f cache@mmlu"


def _finished(path, codec: str = "zstd") -> torch.Tensor:
    """A finished store at `path` of one float32 array "x" (4 chunks) whose rebuild command is REBUILD."""
    data = _data(torch.float32)
    with StoreWriter(path, {"x": ArraySpec(data.shape, "float32", CHUNK)}, "fp", codec, rebuild=REBUILD) as w:
        _write_all(w, "x", data)
        w.finalize({})
    return data


def _resume(path, data: torch.Tensor, codec: str = "zstd") -> list[int]:
    """Reopen the writer as a rerun of the stage does; the chunks it had to recompute."""
    with StoreWriter(path, {"x": ArraySpec(data.shape, "float32", CHUNK)}, "fp", codec, rebuild=REBUILD) as w:
        pending = w.pending_chunks("x")
        _write_all(w, "x", data)
        w.finalize({})
    return pending


def _damage_message(path, why: str) -> str:
    advice = f"rebuild it with `{REBUILD}` (it recomputes the bad chunks)"
    return f"store {path}: chunk 1 of array 'x' {why}; {advice}"


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_deleted_chunk_is_named_never_read_as_zeros_and_a_rerun_recomputes_it(tmp_path, codec):
    data = _finished(tmp_path / "s", codec)
    clean = _files(tmp_path / "s")
    (tmp_path / "s" / "x" / "c.1.0.0").unlink()
    store = open_store(tmp_path / "s")
    assert torch.equal(store.read_rows("x", 0, 16), data[:16])  # chunk 0 is intact and still readable
    want = _damage_message(tmp_path / "s", "is missing (no file x/c.1.0.0)")
    for read in (
        lambda: store.read("x"),
        lambda: store.read_rows("x", 20, 21),
        lambda: store.rows("x")[[40, 17]],
    ):
        with pytest.raises(SemalignError) as err:
            read()
        assert str(err.value) == want
    assert _resume(tmp_path / "s", data, codec) == [1]  # the rerun the message advises recomputes it
    assert _files(tmp_path / "s") == clean
    assert torch.equal(open_store(tmp_path / "s").read("x"), data)


def test_truncated_chunk_is_one_line_on_read_and_recomputed_on_resume(tmp_path):
    data = _finished(tmp_path / "s")
    clean = _files(tmp_path / "s")
    chunk = tmp_path / "s" / "x" / "c.1.0.0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(SemalignError) as err:
        open_store(tmp_path / "s").read_rows("x", 10, 40)
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"store {tmp_path / 's'}: chunk 1 of array 'x' is unreadable ("
    )
    assert message.endswith(f"; rebuild it with `{REBUILD}` (it recomputes the bad chunks)")
    assert _resume(tmp_path / "s", data) == [1]
    assert _files(tmp_path / "s") == clean


def test_altered_chunk_is_named_by_its_checksum(tmp_path):
    data = _finished(tmp_path / "s")
    zarr.open_group(tmp_path / "s", mode="r+")["x"][16] = np.nan  # a valid file with other contents
    altered = data[16:32].clone()
    altered[0] = float("nan")
    got, want = chunk_checksum(to_storage(altered)), chunk_checksum(to_storage(data[16:32]))
    with pytest.raises(SemalignError) as err:
        open_store(tmp_path / "s").rows("x")[[17]]
    assert str(err.value) == _damage_message(tmp_path / "s", f"is damaged (checksum {got}, recorded {want})")
    assert _resume(tmp_path / "s", data) == [1]
    assert torch.equal(open_store(tmp_path / "s").read("x"), data)


def test_finished_store_reopened_verifies_every_chunk_and_keeps_the_good_ones(tmp_path):
    data = _finished(tmp_path / "s")
    assert _resume(tmp_path / "s", data) == []  # nothing damaged: nothing recomputed
    (tmp_path / "s" / "x" / "c.3.0.0").unlink()
    (tmp_path / "s" / "x" / "c.0.0.0").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    assert _resume(tmp_path / "s", data) == [0, 3]
    lines = (tmp_path / "s" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["chunk"] for line in lines] == [0, 1, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_writer_refuses_non_finite_chunks(tmp_path, dtype, bad):
    data = _data(dtype)
    data[20, 1, 2] = data[30, 0, 0] = bad
    with StoreWriter(tmp_path / "s", {"x": ArraySpec(data.shape, logical_dtype(dtype), CHUNK)}, "fp") as w:
        _write_all(w, "x", data, chunks=[0])
        with pytest.raises(SemalignError) as err:
            w.write_chunk("x", 1, data[16:32])
        assert str(err.value) == (
            f"store {tmp_path / 's'}: chunk 1 of 'x' (rows 16..31) holds 2 NaN/inf values and is not "
            "written; rerunning computes them again: fix what it is computed from (the model's weights or "
            "dtype, or the inputs)"
        )
        assert w.pending_chunks("x") == [1, 2, 3]
    largest = torch.tensor([65504.0], dtype=torch.float16)  # finite extremes pass
    assert non_finite(to_storage(largest), "float16") == 0
    assert non_finite(to_storage(torch.tensor([3.3e38, -1e-40]).bfloat16()), "bfloat16") == 0


def test_store_without_checksums_is_refused_and_its_journal_recomputed(tmp_path):
    data = _finished(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del manifest["checksums"]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SemalignError, match="written before chunk checksums"):
        open_store(tmp_path / "s")
    # journal lines without a checksum (an older writer) are not trusted
    (tmp_path / "s" / "progress.jsonl").write_text('{"array": "x", "chunk": 0}\n{"array": "x", "chunk": 2}\n')
    assert _resume(tmp_path / "s", data) == [0, 1, 2, 3]
    assert torch.equal(open_store(tmp_path / "s").read("x"), data)
