"""Where a model comes from, and its content hash: what the `source@<role>` stage needs, without torch or
transformers (importing those takes ~6 s of a stage that only hashes; semalign.models loads the model)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from semalign.embedded import embedded_model
from semalign.errors import SemalignError
from semalign.files import sha256_of

SOURCES = ("embedded", "hf_dir", "gguf")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from (one `models.<role>` entry of params.yaml).

    source: "embedded" (name = a key of semalign.embedded.EMBEDDED_MODELS), "hf_dir" (path = a local
    Hugging Face directory with safetensors) or "gguf" (path = a local .gguf file, sha256 optional).
    allow_pickle: accept pickle `.bin` weights in an hf_dir (they can run code when loaded).
    """

    source: str
    name: str | None = None
    path: str | None = None
    sha256: str | None = None
    allow_pickle: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise SemalignError(f"model source {self.source!r} is unknown; use one of {SOURCES}")
        if self.source == "embedded" and not self.name:
            raise SemalignError("an embedded model needs `name` (e.g. qwen2.5-coder-1.5b-instruct)")
        if self.source != "embedded" and not self.path:
            raise SemalignError(
                f"a {self.source} model needs `path` to a local {self.source.replace('_', ' ')}"
            )


def model_dir(path: str | Path) -> Path:
    """`path` as a Path, if it is a Hugging Face model directory (has config.json)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SemalignError(
            f"{path} is not a model directory (no config.json); run `dvc repro materialize` "
            "or point models.<role>.path in params.yaml at a local Hugging Face directory"
        )
    return path


def source_sha256(source: ModelSource) -> str:
    """Content hash of the model `source` names, so that a model replaced in place is seen as changed: the
    recorded hash of an embedded GGUF (checked when it is assembled), a GGUF file's sha256, or for a Hugging
    Face directory the sha256 over its files' relative names and sha256s, in name order."""
    if source.source == "embedded":
        return embedded_model(source.name).sha256
    path = Path(source.path)
    if source.source == "gguf":
        if not path.is_file():
            raise SemalignError(f"GGUF file {path} does not exist; fix models.<role>.path in params.yaml")
        return sha256_of(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in model_dir(path).rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}:{sha256_of(file)}\n".encode())
    return digest.hexdigest()
