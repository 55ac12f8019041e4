"""The one model loader: local Hugging Face directory, local GGUF file, or the embedded default pair.

Every later stage loads the safetensors directory that the `materialize` stage wrote, so only this
module knows about GGUF and the shipped parts. Models are float32 on CPUs (no bf16 arithmetic there);
`trust_remote_code` stays off.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from semalign.embedded import assemble_gguf, embedded_model, verify_sha256
from semalign.errors import SemalignError
from semalign.sources import ModelSource, model_dir

# Precisions a model may run in (evaluate.dtype, cache.forward_dtype: its weights; train.dtype, seeking.dtype,
# laten.dtype: the forward and backward under autocast): bfloat16 runs the matmuls on AMX / tensor cores,
# 2.5x faster on the 2-core CPU; what it changes is in docs/measurements.md.
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_precision(key: str, value: str) -> None:
    """Stop unless `value` (the setting of params key `key`, e.g. train.dtype) is a MODEL_DTYPES precision."""
    if value not in MODEL_DTYPES:
        raise SemalignError(f"{key} is {value!r}; use one of {list(MODEL_DTYPES)}")


def compute_precision(device: torch.device, precision: str) -> torch.autocast:
    """The forward (and its backward) under autocast to `precision` on `device`: the matmuls run in it, while
    parameters, optimizer state and losses keep their own dtype. float32 is no autocast at all."""
    return torch.autocast(device.type, MODEL_DTYPES[precision], enabled=precision != "float32")


@dataclass(frozen=True)
class ModelInfo:
    """What later stages need to know about a decoder-only LM."""

    arch: str
    num_layers: int
    d_model: int
    vocab_size: int
    num_params: int
    tied_head: bool


def load_source(
    source: ModelSource, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from any source; GGUF weights are dequantised to `dtype`."""
    if source.source == "hf_dir":
        return load_hf_dir(Path(source.path), allow_pickle=source.allow_pickle, dtype=dtype)
    if source.source == "gguf":
        path = Path(source.path)
        if not path.is_file():
            raise SemalignError(f"GGUF file {path} does not exist; fix models.<role>.path in params.yaml")
        if source.sha256:
            verify_sha256(path, source.sha256)
        return load_gguf(path, dtype=dtype)
    spec = embedded_model(source.name)
    with tempfile.TemporaryDirectory(prefix="semalign-gguf-") as tmp:
        gguf_path = assemble_gguf(spec, Path(tmp) / f"{spec.name}.gguf")
        return load_gguf(gguf_path, dtype=dtype)


def load_hf_dir(
    path: Path,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face directory; refuse pickle weights unless `allow_pickle`."""
    path = model_dir(path)
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and any(path.glob("*.bin")) and not allow_pickle:
        raise SemalignError(
            f"{path} holds only pickle .bin weights, which can run code when loaded; convert them to "
            f"safetensors "
            "or set models.<role>.allow_pickle: true if you trust the files"
        )
    if not has_safetensors and not any(path.glob("*.bin")):
        raise SemalignError(
            f"{path} has a config.json but no weights (*.safetensors); copy the weights there"
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=has_safetensors, trust_remote_code=False, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    return model.to(device).eval(), tokenizer


def read_weight_blocks(path: Path, blocks: dict[str, tuple[slice, slice]]) -> dict[str, torch.Tensor]:
    """{state-dict key: its weight's `[rows, cols]` block as stored, float32}, read from the safetensors of
    the model directory `path` (one file or an index of shards) without loading the other weights."""
    path = model_dir(path)
    index = path / "model.safetensors.index.json"
    shard_of = json.loads(index.read_text())["weight_map"] if index.is_file() else {}
    read = {}
    for key, (rows, cols) in blocks.items():
        with safe_open(path / shard_of.get(key, "model.safetensors"), framework="pt") as weights:
            read[key] = weights.get_slice(key)[rows, cols].float()
    return read


def empty_hf_model(path: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The architecture of the local model directory `path` with no weights (parameters on the meta device,
    nothing read but config.json): for a process that receives its weights from another (`training.place`)."""
    path = model_dir(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(path, local_files_only=True), dtype=dtype
        )


def merge_adapter(model: PreTrainedModel, adapter_dir: str | Path) -> PreTrainedModel:
    """`model` with the PEFT LoRA adapter saved in `adapter_dir` merged into its weights."""
    from peft import PeftModel  # only adapted students need it

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SemalignError(
            f"no adapter at {adapter_dir} (adapter_config.json is missing); run the train stage "
            "that writes it (e.g. `dvc repro train@<task>`, or the baseline's stage) or pick a "
            "variant that has one"
        )
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().eval()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of a local model directory (stages that tokenise need no weights)."""
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file():
        raise SemalignError(
            f"{path} has no tokenizer_config.json; run `dvc repro materialize` or fix the model path"
        )
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)


def check_gguf(path: Path) -> None:
    """Stop with one line if `path` is not a whole GGUF file (cut short by a download or a copy): its tensors
    must end within the file. transformers would fail later with a reshape traceback naming neither."""
    from gguf import GGUFReader  # only the GGUF route needs it (inside parsed_once: the shared parse)

    size = path.stat().st_size
    try:
        end = max((t.data_offset + t.n_bytes for t in GGUFReader(path).tensors), default=0)
    except (ValueError, IndexError) as err:  # the reader cannot parse what the file cuts short
        end, detail = None, str(err)
    if end is None or end > size:
        needs = f"its tensors need {end} bytes" if end is not None else f"unreadable: {detail}"
        raise SemalignError(
            f"GGUF file {path} is truncated or damaged ({size} bytes; {needs}); re-download it "
            "(or rerun `dvc repro materialize` for the embedded pair) and retry"
        )


@contextlib.contextmanager
def parsed_once(path: Path):
    """Within the block, every `gguf.GGUFReader(path)` (ours and transformers': the config, the weights and
    the tokenizer each open the file anew) returns one reader, parsed on first use. Parsing a Qwen2.5 GGUF's
    metadata (its 151,643 tokens and merges, element by element) takes ~14 s on 2 cores, four times per
    load without this. The reader only maps the file read-only, so sharing it changes nothing it returns."""
    import gguf

    parse = gguf.GGUFReader
    parsed: dict[Path, object] = {}

    def reader(file, *args, **kwargs):
        if Path(file).resolve() != path.resolve() or args or kwargs:
            return parse(file, *args, **kwargs)
        if path not in parsed:
            parsed[path] = parse(file)
        return parsed[path]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = parse


def load_gguf(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local GGUF file through transformers + gguf, dequantised explicitly to dense `dtype` weights."""
    from transformers import GgufConfig  # only the GGUF route needs it (recent transformers only)

    path = Path(path)
    with parsed_once(path):
        check_gguf(path)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=dtype,
            local_files_only=True,
            trust_remote_code=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    return model.eval(), tokenizer


def save_hf_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Save as a safetensors directory. transformers refuses to save a GGUF-loaded model, so the weights
    are moved (not copied) into a model built from the same config without its quantization config."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    if plain.config.tie_word_embeddings:
        plain.tie_weights()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def materialize(source: ModelSource, out_dir: Path) -> dict:
    """Convert the model `source` names into a safetensors directory `out_dir`, once; what it is and how
    long loading and saving took, for the stage's metrics."""
    started = time.perf_counter()
    model, tokenizer = load_source(source)
    loaded = time.perf_counter()
    save_hf_dir(model, tokenizer, out_dir)
    info = model_info(model)
    return {
        "source": source.source,
        "name": source.name or source.path,
        "arch": info.arch,
        "num_layers": info.num_layers,
        "d_model": info.d_model,
        "vocab_size": info.vocab_size,
        "num_params": info.num_params,
        "tied_head": info.tied_head,
        "load_seconds": round(loaded - started, 1),
        "save_seconds": round(time.perf_counter() - loaded, 1),
    }


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder blocks, in depth order (layer ℓ = 1..L is index ℓ-1)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise SemalignError(
            f"{type(model).__name__} has no `model.layers`; semalign supports Llama/Qwen2-style decoders"
        )
    return layers


def final_norm(model: PreTrainedModel) -> nn.Module:
    """The final norm applied before the LM head (its gain is folded into the `head_normed` bases)."""
    norm = getattr(getattr(model, "model", None), "norm", None)
    if norm is None or getattr(norm, "weight", None) is None:
        raise SemalignError(
            f"{type(model).__name__} has no `model.norm` with a gain; use a Llama/Qwen2-style model"
        )
    return norm


def model_info(model: PreTrainedModel) -> ModelInfo:
    """Depth, width, vocabulary and parameter count of `model`."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    return ModelInfo(
        arch=type(model).__name__,
        num_layers=len(decoder_layers(model)),
        d_model=int(embed.shape[1]),
        vocab_size=int(head.shape[0]),
        num_params=sum(p.numel() for p in model.parameters()),
        tied_head=head.data_ptr() == embed.data_ptr(),
    )
