"""Files the stages write and check: atomic JSON outputs and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename) so a killed stage never leaves half a metrics file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


def sha256_of(path: Path, block: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
