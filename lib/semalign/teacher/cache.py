"""The teacher activation cache: one teacher pass over a split, everything later stages need, on disk.

Layout of one store (`[examples, tokens, ...]`, right-padded rows as in the tokenised split):
    h_00           `[N, T, d_teacher]`  residual stream h_0 (the embeddings), `dtype`
    dh_<ℓ>         `[N, T, d_teacher]`  layer ℓ's contribution Δh_ℓ = h_ℓ − h_{ℓ−1}, ℓ ≥ 1, `dtype`
    topk_logprobs  `[N, T, k]` float32  log-probabilities of the k most likely next tokens
    topk_ids       `[N, T, k]` int32
    rest_logmass   `[N, T]`    float32  log of the mass outside the top k
Positions outside the attention mask are zero. A store made with no layers (`layers=[]`, the agreement
split) holds only the three next-token arrays. A chunk is `batch_size` consecutive examples, so one
forward pass writes one chunk of every array, and a resumed run recomputes exactly the unfinished ones.
Δh is formed in float32 and then rounded, not formed from rounded states: on a real teacher's
massive-activation tokens h_ℓ is up to ~900× larger than Δh_ℓ, and Δh from bfloat16 h there points anywhere
(bench/RESULTS.md). h_ℓ is rebuilt on read as h_0 + Σ Δh (`residual_stream`), at the same bytes per token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from semalign.config import at_least, positive
from semalign.distributed import Shard
from semalign.errors import SemalignError
from semalign.models import check_precision, model_info
from semalign.progress import progress
from semalign.store import ArraySpec, BackgroundWriter, Store, StoreWriter
from semalign.teacher.activations import teacher_forward

if TYPE_CHECKING:  # the data module pulls in `datasets`; the cache needs only the type
    from semalign.data import Encoded

STATE_DTYPES = ("bfloat16", "float16", "float32")
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class CacheConfig:
    """`cache` section. layers: teacher layers kept ("all" or a list of indices in 0..L: h_0 for 0, Δh_ℓ
    for ℓ ≥ 1); top_k: next-token entries kept per position; dtype: storage precision of h_0 and Δh;
    batch_size: examples per forward pass and per chunk; codec: "zstd" or "none" (raw bytes, for disk-bound
    machines); writers: threads compressing and writing chunks in parallel; forward_dtype: the precision the
    teacher's forward pass runs in (float32, or bfloat16 on AMX / tensor cores: every Δh within cosine
    0.998 of float32 on the real teacher, docs/measurements.md); Δh is formed in float32 either way."""

    layers: str | list[int] = at_least("all", 0)  # a list: each index >= 0
    top_k: int = positive(64)
    dtype: str = "bfloat16"
    batch_size: int = positive(4)
    codec: str = "zstd"
    writers: int = positive(2)
    forward_dtype: str = "float32"

    def __post_init__(self):
        check_precision("cache.forward_dtype", self.forward_dtype)
        if self.dtype not in STATE_DTYPES:
            raise SemalignError(f"cache.dtype {self.dtype!r} is not supported; use one of {STATE_DTYPES}")
        if self.top_k < 1 or self.batch_size < 1:
            raise SemalignError(
                f"cache.top_k ({self.top_k}) and cache.batch_size ({self.batch_size}) must be >= 1"
            )
        if isinstance(self.layers, str) and self.layers != "all":
            raise SemalignError(f"cache.layers {self.layers!r} must be 'all' or a list of layer indices")


def state_name(layer: int) -> str:
    """Array name of layer ℓ's stored quantity: h_0 for ℓ = 0, Δh_ℓ for ℓ ≥ 1."""
    return f"h_{layer:02d}" if layer == 0 else f"dh_{layer:02d}"


def kept_layers(config: CacheConfig, num_layers: int) -> list[int]:
    """The layer indices 0..L that the cache keeps, checked against the teacher's depth."""
    layers = list(range(num_layers + 1)) if config.layers == "all" else sorted(set(config.layers))
    bad = [ell for ell in layers if not 0 <= ell <= num_layers]
    if bad:
        raise SemalignError(
            f"cache.layers {bad} out of range: the teacher has layers 0..{num_layers}; fix params.yaml"
        )
    return layers


def cache_arrays(
    num_examples: int, max_length: int, d_model: int, layers: list[int], config: CacheConfig
) -> dict[str, ArraySpec]:
    """The arrays of one cache store and their chunking (one chunk per `batch_size` examples); `layers` empty:
    the next-token arrays only."""
    rows = config.batch_size
    arrays = {
        state_name(ell): ArraySpec((num_examples, max_length, d_model), config.dtype, rows) for ell in layers
    }
    arrays["topk_logprobs"] = ArraySpec((num_examples, max_length, config.top_k), "float32", rows)
    arrays["topk_ids"] = ArraySpec((num_examples, max_length, config.top_k), "int32", rows)
    arrays["rest_logmass"] = ArraySpec((num_examples, max_length), "float32", rows)
    return arrays


def _stored(cache: Store, layer: int, start: int, stop: int) -> torch.Tensor:
    name = state_name(layer)
    if name not in cache.arrays:
        raise SemalignError(
            f"the teacher cache {cache.location} has no {name} (teacher layer {layer}); add {layer} to "
            "cache.layers in params.yaml (or use all)"
        )
    return cache.read_rows(name, start, stop).float()


def read_contribution(cache: Store, layer: int, start: int, stop: int) -> torch.Tensor:
    """Δh_ℓ = h_ℓ − h_{ℓ−1} (ℓ ≥ 1) for examples [start, stop): `[examples, tokens, d_teacher]` float32."""
    if layer < 1:
        raise SemalignError(f"layer {layer} has no residual contribution; contributions start at layer 1")
    return _stored(cache, layer, start, stop)


def residual_stream(cache: Store, last: int, start: int, stop: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(ℓ, h_ℓ) for ℓ = 0..last, examples [start, stop): h_ℓ `[examples, tokens, d_teacher]` float32, summed
    as h_0 + Σ_{j ≤ ℓ} Δh_j in float32 (needs every layer 0..last in the cache)."""
    h = _stored(cache, 0, start, stop)
    yield 0, h
    for ell in range(1, last + 1):
        h = h + _stored(cache, ell, start, stop)
        yield ell, h


def _padded(values: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    """Zero the masked positions of `values` `[B, t, ...]` and pad its token axis to `length`."""
    values = values * mask.view(*mask.shape, *([1] * (values.ndim - 2))).to(values.dtype)
    out = values.new_zeros((values.shape[0], length, *values.shape[2:]))
    out[:, : values.shape[1]] = values
    return out


def _to_state_dtype(h: torch.Tensor, dtype: str) -> torch.Tensor:
    if dtype == "float16" and h.abs().max() > FLOAT16_MAX:
        raise SemalignError(
            f"a cached h_0 or Δh value reaches {h.abs().max().item():.0f}, beyond float16's range; set "
            "cache.dtype: bfloat16"
        )
    return h.to(getattr(torch, dtype))


def write_teacher_cache(
    model: PreTrainedModel,
    encoded: Encoded,
    writer: StoreWriter,
    config: CacheConfig,
    desc: str = "cache",
    shard: Shard = Shard(),
) -> int:
    """Fill every unfinished chunk of `writer` (arrays from `cache_arrays`) that `shard` owns from teacher
    forward passes (one chunk = one batch, so a chunk is the same whichever process computes it). The residual
    states recorded are those of the kept layers that `writer` has arrays for (none: top-k only).

    Returns the number of chunks computed in this call (0 when the store was already complete).
    """
    names = list(writer.arrays)
    layers = [ell for ell in kept_layers(config, model_info(model).num_layers) if state_name(ell) in names]
    recorded = sorted(set(layers) | {ell - 1 for ell in layers if ell > 0})  # Δh_ℓ needs h_{ℓ−1}
    pending = sorted({chunk for name in names for chunk in writer.pending_chunks(name) if shard.owns(chunk)})
    num_tokens = encoded.input_ids.shape[1]
    with BackgroundWriter(writer, workers=config.writers) as background:
        for chunk in progress(pending, desc=f"{desc}: chunks", unit="chunk"):
            start, stop = writer.arrays[names[0]].rows(chunk)
            mask = encoded.attention_mask[start:stop]
            used = int(mask.sum(dim=1).max())
            mask = mask[:, :used].to(model.device)
            out = teacher_forward(
                model, encoded.input_ids[start:stop, :used].to(model.device), mask, recorded, config.top_k
            )
            for ell in layers:
                # Δh in float32 first: rounding h_ℓ and h_{ℓ−1} first would cancel most of Δh's digits.
                state = out.hidden[ell].float() - (out.hidden[ell - 1].float() if ell else 0.0)
                background.submit(
                    state_name(ell), chunk, _to_state_dtype(_padded(state, mask, num_tokens), config.dtype)
                )
            background.submit("topk_logprobs", chunk, _padded(out.topk_logprobs, mask, num_tokens))
            background.submit("topk_ids", chunk, _padded(out.topk_ids, mask, num_tokens))
            background.submit("rest_logmass", chunk, _padded(out.rest_logmass, mask, num_tokens))
    return len(pending)
