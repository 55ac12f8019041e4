"""Data parallelism under `torchrun`: which share of the work this process does, and the shared stores.

A stage launched as `torchrun --nproc-per-node N stages/<stage>.py ...` runs in N processes (ranks); launched
as plain `python stages/<stage>.py` it is one rank of one and nothing here changes its behaviour. Work is
sharded in whole units (a store chunk, an evaluation batch) dealt round-robin, so every unit is computed
exactly as a single process would compute it and the result is identical, bit for bit.

Stores shared by the ranks (`shared_writer`, `finish_store`): rank 0 creates or resumes the store first,
the others open it after a barrier; each rank journals its own chunks (`StoreWriter(rank=...)`), and rank 0
writes the manifest only after every rank has passed the final barrier, so a store with a manifest is
complete whatever the number of processes that wrote it. The store may live at a shared URL (`stores.url`)
that every rank, on any machine, reaches; the pipeline's local path then holds a link to it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from semalign.errors import SemalignError
from semalign.store import ArraySpec, StoreWriter, link_store, placed_store

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world` processes: it owns units `rank`, `rank + world`, ..."""

    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise SemalignError(f"rank {self.rank} of {self.world} processes is not a valid shard")

    def owns(self, unit: int) -> bool:
        return unit % self.world == self.rank

    def take(self, units: Sequence[T]) -> list[T]:
        """This rank's units of `units` (all of them in a single process)."""
        return list(units[self.rank :: self.world])


class Ranks:
    """This process's place in a `torchrun` job (read from RANK, WORLD_SIZE, LOCAL_RANK); a single process
    without them. Initialises the process group (nccl on GPUs, gloo on CPUs) when there are several ranks;
    `device` is this rank's GPU, or the CPU."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = (
            os.environ if environ is None else environ
        )  # Ranks({}): one process, whatever the environment
        world = int(environ.get("WORLD_SIZE", "1"))
        rank, self.local_rank = int(environ.get("RANK", "0")), int(environ.get("LOCAL_RANK", "0"))
        self.shard = Shard(rank, world)
        cuda = torch.cuda.is_available()
        if cuda and world > 1 and torch.cuda.device_count() <= self.local_rank:
            raise SemalignError(
                f"local rank {self.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start no more processes per node than GPUs (torchrun --nproc-per-node)"
            )
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        if world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)

    @property
    def rank(self) -> int:
        return self.shard.rank

    @property
    def world(self) -> int:
        return self.shard.world

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes manifests, metrics and plots."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, value: int) -> int:
        """`value` summed over the ranks (e.g. chunks computed), on every rank."""
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(total)
        return int(total.item())

    def sum_floats(self, values: torch.Tensor) -> torch.Tensor:
        """`values` (a float64 vector) summed over the ranks, on every rank."""
        if self.world == 1:
            return values
        total = values.to(self.device, copy=True)
        dist.all_reduce(total)
        return total.cpu()

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Overwrite `tensor` (on this rank's device) with rank 0's, on every rank."""
        if self.world > 1:
            dist.broadcast(tensor, src=0)

    def tag(self, desc: str) -> str:
        """`desc` for a progress bar, naming the rank when there are several."""
        return desc if self.world == 1 else f"{desc} [rank {self.rank}/{self.world}]"

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> Ranks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def shared_writer(
    ranks: Ranks,
    local: Path,
    arrays: dict[str, ArraySpec],
    fingerprint: str,
    codec: str = "zstd",
    url: str = "",
    rebuild: str = "",
) -> Iterator[StoreWriter]:
    """A `StoreWriter` for this rank on the store the pipeline knows as `local`, placed under `url` when one
    is given (`placed_store`): rank 0 creates (or resumes after verifying its chunks, or rebuilds) it before
    the others open it, so no two ranks ever recreate it; `rebuild` is the command errors name."""
    placed = placed_store(local, url, fingerprint)
    if ranks.is_main:
        writer = StoreWriter(placed, arrays, fingerprint, codec=codec, rebuild=rebuild)
    ranks.barrier()
    if not ranks.is_main:
        writer = StoreWriter(placed, arrays, fingerprint, codec=codec, rank=ranks.rank, rebuild=rebuild)
    try:
        yield writer
    finally:
        writer.close()


def finish_store(ranks: Ranks, writer: StoreWriter, manifest: dict, local: Path) -> dict | None:
    """Wait for every rank's chunks, then on rank 0 write the manifest and make `local` name the store
    (`link_store`); rank 0 returns the manifest, the others None."""
    ranks.barrier()
    if not ranks.is_main:
        return None
    full = writer.finalize(manifest)
    link_store(local, writer.location.url, full)
    return full
