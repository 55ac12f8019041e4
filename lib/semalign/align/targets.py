"""Supervisory targets in student space, built offline from the teacher cache (paper §4.1–4.3).

For each trained student layer k of each pairing (v1: depth map, v2: selection) the teacher quantity at the
supervision interface is the paired teacher layer's residual contribution Δh_ℓ = h_ℓ − h_{ℓ−1} ("before
residual addition", §4.3), either at the pairing's teacher layer or interpolated (1−λ)Δh_a + λΔh_b (§4.1,
non-integer depth ratios; v1 only). It is mapped into student space by the layer's latent map
(`semalign.align.latent_maps`): the paper's target = M Δh / ‖Δh‖ with the folded M, a map fitted on the
alignment split, or the random control. One array per (latent map, pairing, student layer), all in one store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semalign.align.alignment import interpolate
from semalign.align.latent_maps import LatentMap
from semalign.align.pairing import LayerPair
from semalign.distributed import Shard
from semalign.progress import progress
from semalign.store import ArraySpec, BackgroundWriter, Store, StoreWriter
from semalign.teacher.cache import read_contribution


def target_name(student_layer: int, mode: str, map_name: str = "semantic") -> str:
    """Array name of student layer k's target under pairing `mode` (v1 and v2 may pair k differently) made
    with latent map `map_name`."""
    return f"{map_name}_{mode}_target_{student_layer:02d}"


@dataclass(frozen=True)
class TargetSpec:
    """One target array: student layer `pair.student_layer` under pairing `mode`, its teacher quantity
    (interpolated if `interpolate`) mapped by `latent_map`, the map named `map_name` (align.maps)."""

    mode: str
    pair: LayerPair
    latent_map: LatentMap
    interpolate: bool
    map_name: str = "semantic"

    @property
    def name(self) -> str:
        return target_name(self.pair.student_layer, self.mode, self.map_name)


def teacher_quantity(
    cache: Store, pair: LayerPair, use_interpolation: bool, start: int, stop: int
) -> torch.Tensor:
    """The teacher quantity that supervises `pair.student_layer`: `[examples, tokens, d_teacher]` float32."""
    if not use_interpolation:
        return read_contribution(cache, pair.teacher_layer, start, stop)
    a, b, lam = pair.interp.a, pair.interp.b, pair.interp.lam
    if lam in (0.0, 1.0):  # an end point: read one layer, not two
        return read_contribution(cache, b if lam else a, start, stop)
    return interpolate(
        read_contribution(cache, a, start, stop), read_contribution(cache, b, start, stop), lam
    )


def to_student_space(teacher: torch.Tensor, latent_map: LatentMap) -> torch.Tensor:
    """`[examples, tokens, d_teacher]` -> `[examples, tokens, d_student]` float32; zero (padding) stays
    zero."""
    examples, tokens, width = teacher.shape
    return latent_map(teacher.reshape(-1, width)).reshape(examples, tokens, -1)


def target_arrays(
    specs: list[TargetSpec], num_examples: int, num_tokens: int, d_student: int, chunk_rows: int
) -> dict[str, ArraySpec]:
    """One float32 array `[N, T, d_student]` per target."""
    return {s.name: ArraySpec((num_examples, num_tokens, d_student), "float32", chunk_rows) for s in specs}


def write_targets(
    cache: Store,
    specs: list[TargetSpec],
    writer: StoreWriter,
    desc: str = "align",
    shard: Shard = Shard(),
) -> int:
    """Fill every unfinished chunk of `writer` that `shard` owns with the targets of `specs`; returns the
    number of chunks computed. Specs differing only in their map read the teacher quantity once per chunk."""
    pending = sorted({c for name in writer.arrays for c in writer.pending_chunks(name) if shard.owns(c)})
    with BackgroundWriter(writer) as background:
        for chunk in progress(pending, desc=f"{desc}: chunks", unit="chunk"):
            quantities = {}
            for spec in specs:
                start, stop = writer.arrays[spec.name].rows(chunk)
                key = (spec.mode, spec.pair, spec.interpolate, start, stop)
                if key not in quantities:
                    quantities[key] = teacher_quantity(cache, spec.pair, spec.interpolate, start, stop)
                background.submit(spec.name, chunk, to_student_space(quantities[key], spec.latent_map))
    return len(pending)
