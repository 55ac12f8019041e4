"""The one Zarr v3 reader/writer: chunked along rows, resumable, completed by a manifest.

A store is a directory (a local path or any fsspec URL, see `semalign.location`) with a zarr v3 group of
named N-D arrays, chunked along axis 0 (rows: tokens or vocabulary entries) into few, large chunks, one file
each. After a whole chunk is written and made durable, it is added to the writer's journal `progress.jsonl`
(one JSON line per chunk, the file replaced atomically each time, which object stores allow where appending
is not); a writer reopened with the same spec and fingerprint skips journaled chunks, any other difference
recreates the store. `manifest.json` is written last, atomically, once every chunk is journaled; readers
refuse a store without it. Several processes may write one store (`semalign.distributed`): each journals its
own chunks in `progress.<rank>.jsonl` (rank 0 in `progress.jsonl`), every journal counts on resume whatever
the number of processes, and only rank 0 may create the store. bfloat16 is stored losslessly as its uint16
bits, the logical dtype recorded as an array attribute.

Integrity: each journal line carries the chunk's checksum (xxh3-64 of its decoded storage bytes, so it holds
whatever the codec), and the manifest lists them all. A reader verifies every chunk it reads: a missing,
truncated or altered chunk raises SemalignError naming the store, array, chunk and the command that rebuilds
it (the writer's `rebuild`, recorded in the manifest). Rank 0 reopening a store verifies every journaled chunk
before trusting the journal and drops the bad ones, so rerunning the writing stage recomputes exactly them,
never zero chunks over a damaged store. A chunk holding NaN or ±inf is refused when written, so no store
holds one. Verification costs are in bench/RESULTS.md (bench/bench_store.py).

A store kept elsewhere than where the pipeline looks for it (`placed_store`: under a shared URL, named by
its fingerprint) is reached through a small link file `<name>.link.json` at the local path (`link_store`),
which `open_store` follows and checks.

Codecs: "zstd" (zarr's ZstdCodec, level 3) or "none". On the 2-core CPU machine zstd beat Blosc-zstd +
shuffle (0.39 vs 0.19 GB/s float32, 0.23 vs 0.11 GB/s bf16) but shrinks random-like float32 by only ~8 %
and bf16 activations by ~29 %; raw bytes reach disk at ~0.58 GB/s, so pick "none" for disk-bound dumps.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash
import zarr
from zarr.codecs import ZstdCodec

from semalign.errors import SemalignError
from semalign.location import Location
from semalign.progress import progress

log = logging.getLogger(__name__)

# logical dtype -> (torch dtype, numpy dtype on disk)
DTYPES = {
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    "bfloat16": (torch.bfloat16, np.uint16),
    "int32": (torch.int32, np.int32),
    "int64": (torch.int64, np.int64),
    "uint8": (torch.uint8, np.uint8),
    "bool": (torch.bool, np.bool_),
}
CODECS = ("zstd", "none")
MAX_CHUNK_FILES = 1000
JOURNAL, MANIFEST, GROUP = "progress.jsonl", "manifest.json", "zarr.json"
LINK_SUFFIX = ".link.json"
CHECKSUMS, REBUILD = "checksums", "rebuild"  # manifest keys the store owns besides its spec
# bfloat16 NaN and ±inf: all eight exponent bits set
BFLOAT16_EXPONENT = 0x7F80


def logical_dtype(dtype: torch.dtype) -> str:
    """The store's name for a torch dtype (a key of DTYPES)."""
    for name, (torch_dtype, _) in DTYPES.items():
        if torch_dtype == dtype:
            return name
    raise SemalignError(f"dtype {dtype} cannot be stored; convert to one of {sorted(DTYPES)}")


def to_storage(t: torch.Tensor) -> np.ndarray:
    """The numpy array written to disk for `t` (bfloat16 becomes its uint16 bits; may share memory)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    """The tensor of logical dtype `dtype` whose storage form is `a` (inverse of to_storage)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: `shape` (rows first), logical `dtype` (a key of DTYPES), rows per chunk."""

    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if self.dtype not in DTYPES:
            raise SemalignError(f"array dtype {self.dtype!r} is not storable; use one of {sorted(DTYPES)}")
        if not self.shape or min(self.shape) < 1 or self.chunk_rows < 1:
            raise SemalignError(f"array shape {self.shape} / chunk_rows {self.chunk_rows} must be positive")

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array before compression (padding included)."""
        return math.prod(self.shape) * np.dtype(DTYPES[self.dtype][1]).itemsize

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.shape[0] / self.chunk_rows)

    def rows(self, chunk_index: int) -> tuple[int, int]:
        """[start, stop) rows of chunk `chunk_index`; the last chunk may be short."""
        if not 0 <= chunk_index < self.num_chunks:
            raise SemalignError(f"chunk index {chunk_index} out of range 0..{self.num_chunks - 1}")
        start = chunk_index * self.chunk_rows
        return start, min(start + self.chunk_rows, self.shape[0])


def _spec_json(arrays: dict[str, ArraySpec], fingerprint: str, codec: str) -> dict:
    """The spec as stored in JSON (lists, not tuples), so it compares equal after a round trip."""
    as_json = {name: asdict(spec) | {"shape": list(spec.shape)} for name, spec in sorted(arrays.items())}
    return {"fingerprint": fingerprint, "codec": codec, "arrays": as_json}


def _lookup(arrays: dict[str, ArraySpec], name: str, where: Location) -> ArraySpec:
    if name not in arrays:
        raise SemalignError(f"store {where} has no array {name!r}; arrays are {sorted(arrays)}")
    return arrays[name]


def chunk_checksum(array: np.ndarray) -> str:
    """xxh3-64 (16 hex digits) of a chunk's decoded storage bytes, C order: what a journal line records."""
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def non_finite(array: np.ndarray, dtype: str) -> int:
    """How many values of `array` (storage form of logical `dtype`) are NaN or ±inf; 0 for integers."""
    if dtype == "bfloat16":
        return int(np.count_nonzero((array & BFLOAT16_EXPONENT) == BFLOAT16_EXPONENT))
    if dtype in ("float32", "float16"):
        return int(array.size - np.count_nonzero(np.isfinite(array)))
    return 0


def _journal_text(chunks: dict[tuple[str, int], str]) -> str:
    return "".join(
        json.dumps({"array": a, "chunk": i, "xxh3": chunks[a, i]}) + "\n" for a, i in sorted(chunks)
    )


def _rebuild_advice(rebuild: str) -> str:
    if rebuild:
        return f"rebuild it with `{rebuild}` (it recomputes the bad chunks)"
    return (
        "rebuild it with `dvc repro -f <stage>` for the stage that writes it (it recomputes the bad chunks)"
    )


def _chunk_key(group: zarr.Group, name: str, chunk_index: int) -> str:
    """The path under the store's root of the file holding chunk `chunk_index` of array `name`."""
    array = group[name]
    return f"{name}/{array.metadata.encode_chunk_key((chunk_index,) + (0,) * (array.ndim - 1))}"


def _chunk_problem(
    group: zarr.Group, where: Location, name: str, spec: ArraySpec, chunk: int, want: str
) -> str | None:
    """What is wrong with chunk `chunk` of array `name` (e.g. "is missing"), None if it reads back with
    checksum `want`."""
    key = _chunk_key(group, name, chunk)
    if not where.exists(key):  # zarr would read it as zeros
        return f"is missing (no file {key})"
    start, stop = spec.rows(chunk)
    try:
        got = chunk_checksum(group[name][start:stop])
    except Exception as err:  # a truncated or garbled chunk fails in its codec (zstd)
        return f"is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
    return None if got == want else f"is damaged (checksum {got}, recorded {want})"


class StoreWriter:
    """Creates or resumes the store at `where` (local path or fsspec URL) holding `arrays`; `fingerprint`
    names what the data came from (model + data hashes), so a store built from other inputs is never
    resumed."""

    def __init__(
        self,
        where: str | Path,
        arrays: dict[str, ArraySpec],
        fingerprint: str,
        codec: str = "zstd",
        rank: int = 0,
        rebuild: str = "",
    ):
        """`rebuild`: the command that recomputes this store's bad chunks (e.g. `dvc repro -f cache@mmlu`),
        recorded in the manifest and named in every error about its chunks."""
        if codec not in CODECS:
            raise SemalignError(f"store codec {codec!r} is unknown; use one of {CODECS}")
        files = sum(a.num_chunks for a in arrays.values())
        if files > MAX_CHUNK_FILES:
            raise SemalignError(
                f"store {where} would hold {files} chunk files (> {MAX_CHUNK_FILES}); raise chunk_rows"
            )
        self.location, self.arrays = Location.of(where), dict(arrays)
        self._spec, self.rebuild = _spec_json(arrays, fingerprint, codec), rebuild
        if rank == 0:
            self._open_or_create(codec)
        else:
            self._open_created_by_rank_0()
        # The manifest is rewritten by finalize(); until then the store reads as incomplete.
        self.location.remove(MANIFEST)
        self._journal = JOURNAL if rank == 0 else f"progress.{rank}.jsonl"
        if rank == 0:  # before any other rank opens the store (shared_writer): they read verified journals
            self._drop_bad_chunks()
        self._done, self._mine = self._read_journals()
        self._journal_lock = threading.Lock()  # chunks of one store may be written from several threads
        self._closed = False

    def _open_or_create(self, codec: str) -> None:
        where = self.location
        try:
            self._group = zarr.open_group(where.zarr_store(read_only=False), mode="r+", zarr_format=3)
            if self._group.attrs.get("semalign") == self._spec:
                return
            log.warning(
                "store %s was built from another spec or fingerprint: removing and recreating it", where
            )
        except FileNotFoundError:
            pass
        except Exception as err:  # unreadable metadata: the store cannot be resumed, only rebuilt
            log.warning("store %s has unreadable zarr metadata (%s): removing and recreating it", where, err)
        entries = where.entries()
        if entries:
            if GROUP not in entries:
                raise SemalignError(f"{where} exists and is not a store; remove it or choose another path")
            where.remove_tree(keep_last=GROUP)
        self._group = zarr.open_group(
            where.zarr_store(read_only=False), mode="w-", zarr_format=3, attributes={"semalign": self._spec}
        )
        for name, spec in self.arrays.items():
            self._group.create_array(
                name,
                shape=spec.shape,
                chunks=(spec.chunk_rows, *spec.shape[1:]),
                dtype=DTYPES[spec.dtype][1],
                compressors=ZstdCodec(level=3) if codec == "zstd" else None,
                chunk_key_encoding={
                    "name": "default",
                    "separator": ".",
                },  # flat c.<i>.0 files, no dir per chunk
                attributes={"logical_dtype": spec.dtype},
            )

    def _open_created_by_rank_0(self) -> None:
        try:
            self._group = zarr.open_group(self.location.zarr_store(read_only=False), mode="r+", zarr_format=3)
            ready = self._group.attrs.get("semalign") == self._spec
        except Exception:  # missing or unreadable: rank 0 has not created it
            ready = False
        if not ready:
            raise SemalignError(
                f"store {self.location} was not created by rank 0 with this spec; open the writer "
                "on rank 0 first (semalign.distributed.shared_writer does)"
            )

    def _journal_entries(self, journal: str) -> dict[tuple[str, int], str | None]:
        """(array, chunk) -> checksum of each line of `journal` (None for a line of an older format)."""
        lines = self.location.read_text(journal).splitlines()
        return {(e["array"], e["chunk"]): e.get("xxh3") for e in map(json.loads, lines)}

    def _read_journals(self) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], str]]:
        """(chunks journaled by any rank, those in this writer's own journal): (array, chunk) -> checksum."""
        done, mine = {}, {}
        for journal in self.location.glob("progress*.jsonl"):
            entries = self._journal_entries(journal)
            done |= entries
            if journal == self._journal:
                mine |= entries
        return done, mine

    def _drop_bad_chunks(self) -> None:
        """Read back every journaled chunk of every rank's journal and remove from the journals those that
        are missing, unreadable or differ from their checksum, so they are pending again."""
        journals = {
            journal: self._journal_entries(journal) for journal in self.location.glob("progress*.jsonl")
        }
        total = sum(len(entries) for entries in journals.values())
        if not total:
            return
        bar = progress(range(total), desc=f"verify {self.location}", unit="chunk")
        for journal, entries in journals.items():
            bad = []
            for (name, chunk), want in sorted(entries.items()):
                spec = self.arrays.get(name)
                if spec is None or not 0 <= chunk < spec.num_chunks:
                    why = "is not part of the spec"
                elif want is None:
                    why = "has no checksum (journaled by an older semalign)"
                else:
                    why = _chunk_problem(self._group, self.location, name, spec, chunk, want)
                if why:
                    bad.append((name, chunk))
                    log.warning(
                        "store %s: chunk %d of %r %s; recomputing it", self.location, chunk, name, why
                    )
                bar.update(1)
            if bad:
                kept = {key: entries[key] for key in entries if key not in bad}
                self.location.write_atomic(journal, _journal_text(kept))
        bar.close()

    def pending_chunks(self, name: str) -> list[int]:
        """Chunk indices of array `name` that are not yet journaled (all of them for a new store)."""
        spec = _lookup(self.arrays, name, self.location)
        return [i for i in range(spec.num_chunks) if (name, i) not in self._done]

    def write_chunk(self, name: str, chunk_index: int, data: torch.Tensor | np.ndarray) -> None:
        """Write whole chunk `chunk_index` of `name` (`data: [chunk rows, *shape[1:]]`), make it durable,
        journal it."""
        if self._closed:
            raise SemalignError(
                f"chunk {chunk_index} of {name!r} written after the writer of {self.location} was closed"
            )
        spec = _lookup(self.arrays, name, self.location)
        start, stop = spec.rows(chunk_index)
        array = to_storage(data) if isinstance(data, torch.Tensor) else np.asarray(data)
        want = (stop - start, *spec.shape[1:])
        if array.shape != want or array.dtype != DTYPES[spec.dtype][1]:
            raise SemalignError(
                f"chunk {chunk_index} of {name!r} is {tuple(array.shape)} {array.dtype}; "
                f"expected {want} {spec.dtype}"
            )
        bad = non_finite(array, spec.dtype)
        if bad:
            raise SemalignError(
                f"store {self.location}: chunk {chunk_index} of {name!r} (rows {start}..{stop - 1}) holds "
                f"{bad} NaN/inf values and is not written; rerunning computes them again: fix what it is "
                "computed from (the model's weights or dtype, or the inputs)"
            )
        checksum = chunk_checksum(array)
        # An all-fill-value chunk must still become a file: it is what is made durable before journaling.
        zarr_array = self._group[name].with_config({"write_empty_chunks": True})
        zarr_array[start:stop] = array
        self.location.make_durable(_chunk_key(self._group, name, chunk_index))
        with self._journal_lock:
            self._mine[name, chunk_index] = checksum
            self.location.write_atomic(self._journal, _journal_text(self._mine))
            self._done[name, chunk_index] = checksum

    def finalize(self, manifest: dict) -> dict:
        """Write manifest.json (arrays, fingerprint, codec + the caller's `manifest`) once all chunks are
        journaled (by any rank: other ranks' journals are read again); returns the manifest written."""
        self._done |= self._read_journals()[0]
        missing = {name: self.pending_chunks(name) for name in self.arrays if self.pending_chunks(name)}
        if missing:
            raise SemalignError(
                f"store {self.location} is missing chunks {missing}; write them before finalize()"
            )
        clash = sorted(set(manifest) & {*self._spec, CHECKSUMS, REBUILD})
        if clash:
            raise SemalignError(f"manifest keys {clash} are reserved by the store; rename them")
        checksums = {
            name: [self._done[name, i] for i in range(spec.num_chunks)] for name, spec in self.arrays.items()
        }
        full = self._spec | {CHECKSUMS: checksums, REBUILD: self.rebuild} | manifest
        self.location.write_atomic(MANIFEST, json.dumps(full, indent=2))
        return full

    def close(self) -> None:
        """Refuse further chunks (nothing stays open between chunks: each journal update is a whole write)."""
        self._closed = True

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackgroundWriter:
    """Runs `writer.write_chunk` on `workers` threads behind a queue of at most `maxsize` chunks, so
    compression and disk I/O overlap the producer; several workers compress and fsync distinct chunks in
    parallel (zstd and fsync release the GIL), which a fast producer such as a GPU needs to reach the
    disk's speed. A worker error is raised at the next submit/close."""

    def __init__(self, writer: StoreWriter, maxsize: int = 3, workers: int = 1):
        if workers < 1:
            raise SemalignError(f"background writer workers={workers}; use at least 1")
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max(maxsize, workers))
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._work, name=f"store-writer-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure keep draining, so the producer never blocks forever
                try:
                    self.writer.write_chunk(*item)
                except BaseException as err:
                    self._error = err

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, name: str, chunk_index: int, data: torch.Tensor) -> None:
        """Queue chunk `chunk_index` of `name`; `data` is copied to host memory first, so the caller may
        reuse it."""
        self._raise_error()
        if not any(thread.is_alive() for thread in self._threads):
            raise SemalignError(
                f"chunk {chunk_index} of {name!r} submitted after the background writer was closed"
            )
        self._queue.put((name, chunk_index, to_storage(data.detach().to("cpu", copy=True))))

    def close(self) -> None:
        """Drain the queue, join the workers, raise an error one of them had."""
        alive = [thread for thread in self._threads if thread.is_alive()]
        for _ in alive:
            self._queue.put(None)
        for thread in alive:
            thread.join()
        self._raise_error()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Store:
    """A finished store, read-only: `manifest` (dict), `arrays` (name -> ArraySpec). Every chunk read is
    checked against the manifest's checksum."""

    def __init__(self, location: Location, manifest: dict, group: zarr.Group):
        self.location, self.manifest, self._group = location, manifest, group
        self.arrays = {
            name: ArraySpec(tuple(a["shape"]), a["dtype"], a["chunk_rows"])
            for name, a in manifest["arrays"].items()
        }

    def _damaged(self, name: str, chunk: int, why: str) -> SemalignError:
        return SemalignError(
            f"store {self.location}: chunk {chunk} of array {name!r} {why}; "
            f"{_rebuild_advice(self.manifest.get(REBUILD, ''))}"
        )

    def _chunks(self, name: str, first: int, last: int) -> np.ndarray:
        """Chunks first..last of array `name`, verified, in storage form: `[their rows, *shape[1:]]`."""
        spec, want = self.arrays[name], self.manifest[CHECKSUMS][name]
        start, stop = spec.rows(first)[0], spec.rows(last)[1]
        try:
            data, failure = self._group[name][start:stop], None
        except Exception as err:  # a chunk its codec cannot decode: found below, chunk by chunk
            data, failure = None, err
        for chunk in range(first, last + 1):
            if data is not None:
                lo, hi = (row - start for row in spec.rows(chunk))
                if chunk_checksum(data[lo:hi]) == want[chunk]:
                    continue
            why = _chunk_problem(self._group, self.location, name, spec, chunk, want[chunk])
            if why or data is not None:
                raise self._damaged(name, chunk, why or f"changed while it was read (checksum {want[chunk]})")
        if data is None:
            raise SemalignError(
                f"store {self.location}: rows {start}..{stop - 1} of {name!r} failed to read ({failure}) "
                "though each of their chunks reads back intact; retry"
            ) from failure
        return data

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of array `name`: `[stop - start, *shape[1:]]`, reading (and verifying) only the
        chunks they touch."""
        spec = _lookup(self.arrays, name, self.location)
        if not 0 <= start <= stop <= spec.shape[0]:
            raise SemalignError(f"rows [{start}, {stop}) are outside array {name!r} of {spec.shape[0]} rows")
        if start == stop:
            return from_storage(np.zeros((0, *spec.shape[1:]), DTYPES[spec.dtype][1]), spec.dtype)
        first, last = start // spec.chunk_rows, (stop - 1) // spec.chunk_rows
        offset = first * spec.chunk_rows
        return from_storage(self._chunks(name, first, last)[start - offset : stop - offset], spec.dtype)

    def read(self, name: str) -> torch.Tensor:
        """The whole array `name`: `shape`."""
        return self.read_rows(name, 0, _lookup(self.arrays, name, self.location).shape[0])

    def read_selection(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` (any order, `[n]` integers) of array `name`: `[n, *shape[1:]]`, reading only their
        chunks."""
        spec = _lookup(self.arrays, name, self.location)
        rows = torch.as_tensor(rows, dtype=torch.int64).numpy()
        if not len(rows):
            return self.read_rows(name, 0, 0)
        if not (int(rows.min()) >= 0 and int(rows.max()) < spec.shape[0]):
            raise SemalignError(f"rows {rows.tolist()} reach outside array {name!r} of {spec.shape[0]} rows")
        chunks, index = np.unique(rows // spec.chunk_rows, return_inverse=True)
        blocks = [self._chunks(name, chunk, chunk) for chunk in chunks]
        block_start = np.cumsum([0] + [len(b) for b in blocks[:-1]])  # each chunk's first row once stacked
        within = rows - chunks[index] * spec.chunk_rows
        return from_storage(np.concatenate(blocks)[block_start[index] + within], spec.dtype)

    def rows(self, name: str) -> StoreRows:
        """Array `name` as a lazy row source: `len()` rows, `[rows]` reads just those rows."""
        _lookup(self.arrays, name, self.location)
        return StoreRows(self, name)


@dataclass(frozen=True)
class StoreRows:
    """One array of a finished store that reads rows on demand: `view[rows]` -> `[len(rows), *shape[1:]]`."""

    store: Store
    name: str

    def __len__(self) -> int:
        return self.store.arrays[self.name].shape[0]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.store.read_selection(self.name, rows)


@dataclass(frozen=True)
class StoresConfig:
    """`stores` section: `url`, the directory or fsspec URL under which the caches and targets live (shared
    by every machine of a team); "" keeps them in the pipeline's own outputs under data/."""

    url: str = ""


def placed_store(local: Path, url: str, fingerprint: str) -> str | Path:
    """Where the stage writing the store the pipeline knows as `local` (e.g. data/cache/mmlu/training.zarr)
    puts it: `local` itself when `url` is empty, else `<url>/<local minus .zarr>-<fingerprint[:16]>.zarr`, so
    stores made from other inputs sit side by side and a rerun on any machine resumes the same one."""
    if not url:
        return local
    return f"{url.rstrip('/')}/{local.with_suffix('').as_posix()}-{fingerprint[:16]}.zarr"


def link_store(local: Path, placed: str | Path, manifest: dict) -> None:
    """Make `local` name the finished store at `placed` (its `manifest`): a link file `<local>.link.json`
    (URL and fingerprint) when the store lies elsewhere, replacing a local store of an earlier run; none when
    it is `local` itself."""
    link = local.with_name(local.name + LINK_SUFFIX)
    if Path(placed) == local:
        link.unlink(missing_ok=True)
        return
    if local.is_dir():
        log.warning("store %s is replaced by a link to %s: removing the local copy", local, placed)
        Location.of(local).remove_tree(keep_last=GROUP)
    link.parent.mkdir(parents=True, exist_ok=True)
    Location.of(link.parent).write_atomic(
        link.name, json.dumps({"url": str(placed), "fingerprint": manifest["fingerprint"]})
    )


def open_store(path: str | Path) -> Store:
    """Open a finished store for reading: a local path, an fsspec URL, or a local path whose link file
    (`link_store`) names the URL; a missing, unfinished or corrupt store raises SemalignError."""
    link = Path(str(path) + LINK_SUFFIX)
    if "://" not in str(path) and link.is_file():
        target = json.loads(link.read_text(encoding="utf-8"))
        store = open_store(target["url"])
        if store.manifest["fingerprint"] != target["fingerprint"]:
            raise SemalignError(
                f"store {target['url']} (linked from {link}) holds other data than the link "
                "records; rerun `dvc repro` for the stage that writes it"
            )
        return store
    where = Location.of(path)
    where.refresh()
    if not where.exists():
        raise SemalignError(f"store {where} does not exist; run the `dvc repro` stage that writes it")
    if not where.exists(MANIFEST):
        raise SemalignError(
            f"store {where} is incomplete (no {MANIFEST}): it was interrupted; rerun "
            "`dvc repro <stage>` for the stage that writes it (it resumes)"
        )
    try:
        manifest = json.loads(where.read_text(MANIFEST))
        group = zarr.open_group(where.zarr_store(read_only=True), mode="r", zarr_format=3)
        for name, spec in manifest["arrays"].items():
            if tuple(group[name].shape) != tuple(spec["shape"]):
                raise ValueError(
                    f"array {name!r} has shape {group[name].shape}, manifest says {spec['shape']}"
                )
            chunks = -(-spec["shape"][0] // spec["chunk_rows"])
            if len(manifest.get(CHECKSUMS, {}).get(name, [])) != chunks:
                raise ValueError(
                    f"its manifest has no checksum for each of the {chunks} chunks of {name!r}, as a store "
                    "written before chunk checksums"
                )
    except Exception as err:
        raise SemalignError(
            f"store {where} is corrupt ({err}); delete it and rerun `dvc repro <stage>`"
        ) from err
    return Store(where, manifest, group)
