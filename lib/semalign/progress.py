"""The one progress-bar helper, so every long loop looks and behaves the same."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """Wrap `items` in a tqdm bar on stderr; `desc` says what is being done (e.g. "cache: chunks")."""
    return tqdm(
        items, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=1.0
    )
