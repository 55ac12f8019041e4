"""A tiny teacher cache built in code, shared by the cache and targets tests."""

from pathlib import Path

import torch

from semalign.data import Encoded, data_fingerprint
from semalign.store import StoreWriter
from semalign.teacher.cache import CacheConfig, cache_arrays, kept_layers, write_teacher_cache
from semalign.testing import tiny_model

NUM_LAYERS, WIDTH = 3, 32


def make_inputs(num_examples: int = 7, max_length: int = 12, seed: int = 0) -> Encoded:
    """Right-padded random examples of different lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_length + 1, (num_examples,), generator=g)
    ids = torch.randint(5, 300, (num_examples, max_length), generator=g)
    mask = (torch.arange(max_length)[None] < lengths[:, None]).long()
    ids = ids * mask
    return Encoded(ids, mask, mask.bool(), ids.masked_fill(mask == 0, -100))


def build_cache(
    path: Path, config: CacheConfig, encoded: Encoded, model=None, rebuild: str = "", states: bool = True
) -> int:
    """Write (or resume) the cache store at `path`, as the cache stage does; the chunks computed.
    `states=False`: the next-token arrays only (as for the agreement split)."""
    model = model or tiny_model("qwen2", seed=1, num_layers=NUM_LAYERS, hidden_size=WIDTH)
    layers = kept_layers(config, NUM_LAYERS) if states else []
    arrays = cache_arrays(*encoded.input_ids.shape, WIDTH, layers, config)
    with StoreWriter(path, arrays, "fp", rebuild=rebuild) as writer:
        computed = write_teacher_cache(model, encoded, writer, config)
        writer.finalize({"layers": layers, "data_fingerprint": data_fingerprint(encoded.tensors())})
    return computed
