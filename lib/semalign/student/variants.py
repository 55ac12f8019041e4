"""Variant names of `train.objectives`: `<objective>[-<map>][-s<seed>]`, one adapter each.

objective: v1 | v2 | sft | kd; map (v1 and v2 only, default semantic): the latent map whose targets the
variant trains on, one of `align.maps`; `-s<n>`: a second (third, ...) training run with train.seed + n.
E.g. v1, v1-ridge, v2-ridge, kd, sft-s1, v1-random-s2.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from semalign.errors import SemalignError

OBJECTIVES = ("v1", "v2", "sft", "kd")
WITH_TARGETS = ("v1", "v2")  # the objectives that train on a latent map's targets
TARGET_MAPS = ("semantic", "ridge", "procrustes", "random")  # = semalign.align.alignment.TARGET_MAPS
DEFAULT_MAP = "semantic"
SYNTAX = "<objective>[-<map>][-s<seed>], e.g. v1, v1-ridge, kd, sft-s1"
_SEED = re.compile(r"s[1-9][0-9]*")


@dataclass(frozen=True)
class Variant:
    """One parsed variant name: objective (OBJECTIVES), map (v1/v2: the targets' latent map; sft/kd: None),
    seed_offset (added to train.seed)."""

    objective: str
    map: str | None
    seed_offset: int


def parse_variant(name: str, maps: Sequence[str] | None = None) -> Variant:
    """The variant `name` names; with `maps` (the targets' maps, align.maps) its map must be one of them."""
    parts = name.split("-") if isinstance(name, str) else []
    objective = parts[0] if parts else ""
    if objective not in OBJECTIVES:
        raise SemalignError(
            f"train.objectives entry {name!r} is unknown: it must start with one of {list(OBJECTIVES)} "
            f"({SYNTAX})"
        )
    rest, seed_offset = parts[1:], 0
    if rest and rest[-1].startswith("s") and rest[-1] not in TARGET_MAPS:
        if not _SEED.fullmatch(rest[-1]):
            raise SemalignError(
                f"train.objectives entry {name!r}: seed suffix {'-' + rest[-1]!r} must be -s<n> with n a "
                f"positive whole number without leading zeros, e.g. {objective}-s1 ({SYNTAX})"
            )
        seed_offset, rest = int(rest[-1][1:]), rest[:-1]
    if len(rest) > 1:
        raise SemalignError(
            f"train.objectives entry {name!r} has {len(rest)} map parts {rest}; "
            f"name at most one map ({SYNTAX})"
        )
    latent_map = rest[0] if rest else None
    if latent_map is not None and objective not in WITH_TARGETS:
        raise SemalignError(
            f"train.objectives entry {name!r}: {objective} trains on no targets, so it takes no map; use "
            f"{objective}{name[len(objective) + len(latent_map) + 1 :]} or one of {list(WITH_TARGETS)} "
            f"with the map"
        )
    if latent_map is not None and latent_map not in TARGET_MAPS:
        raise SemalignError(
            f"train.objectives entry {name!r}: map {latent_map!r} is unknown; use one of {list(TARGET_MAPS)}"
        )
    if objective in WITH_TARGETS:
        latent_map = latent_map or DEFAULT_MAP
        if maps is not None and latent_map not in maps:
            raise SemalignError(
                f"train.objectives entry {name!r} trains on {latent_map} targets but align.maps is "
                f"{list(maps)}; add {latent_map} to align.maps"
            )
    return Variant(objective, latent_map, seed_offset)
