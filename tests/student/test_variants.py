"""Variant names `<objective>[-<map>][-s<seed>]`: what they parse to, and one exact line for each bad name."""

import pytest

from semalign.align.alignment import TARGET_MAPS
from semalign.errors import SemalignError
from semalign.student import variants
from semalign.student.training import TrainConfig
from semalign.student.variants import Variant, parse_variant

KINDS = "['v1', 'v2', 'sft', 'kd']"
SYNTAX = "(<objective>[-<map>][-s<seed>], e.g. v1, v1-ridge, kd, sft-s1)"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("v1", Variant("v1", "semantic", 0)),
        ("v1-ridge", Variant("v1", "ridge", 0)),
        ("v1-random", Variant("v1", "random", 0)),
        ("v2", Variant("v2", "semantic", 0)),
        ("v2-ridge", Variant("v2", "ridge", 0)),
        ("v1-procrustes", Variant("v1", "procrustes", 0)),
        ("sft", Variant("sft", None, 0)),
        ("kd", Variant("kd", None, 0)),
        ("sft-s1", Variant("sft", None, 1)),
        ("v1-s1", Variant("v1", "semantic", 1)),
        ("v1-ridge-s12", Variant("v1", "ridge", 12)),
        ("kd-s3", Variant("kd", None, 3)),
    ],
)
def test_variant_names_parse(name, expected):
    assert parse_variant(name) == expected
    assert TrainConfig(objective=name).variant == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "v3",
            f"train.objectives entry 'v3' is unknown: it must start with one of {KINDS} {SYNTAX}",
        ),
        (
            "",
            f"train.objectives entry '' is unknown: it must start with one of {KINDS} {SYNTAX}",
        ),
        (
            "sft-ridge",
            "train.objectives entry 'sft-ridge': sft trains on no targets, so it takes no map; use sft or "
            "one of ['v1', 'v2'] with the map",
        ),
        (
            "kd-ridge-s1",
            "train.objectives entry 'kd-ridge-s1': kd trains on no targets, so it takes no map; use kd-s1 "
            "or one of ['v1', 'v2'] with the map",
        ),
        (
            "v1-s",
            "train.objectives entry 'v1-s': seed suffix '-s' must be -s<n> with n a positive whole number "
            f"without leading zeros, e.g. v1-s1 {SYNTAX}",
        ),
        (
            "v1-s0",
            "train.objectives entry 'v1-s0': seed suffix '-s0' must be -s<n> with n a positive whole number "
            f"without leading zeros, e.g. v1-s1 {SYNTAX}",
        ),
        (
            "v1-ridge-ridge",
            "train.objectives entry 'v1-ridge-ridge' has 2 map parts ['ridge', 'ridge']; "
            f"name at most one map {SYNTAX}",
        ),
        (
            "v1-affine",
            "train.objectives entry 'v1-affine': map 'affine' is unknown; use one of ['semantic', 'ridge', "
            "'procrustes', 'random']",
        ),
    ],
)
def test_bad_variant_names_stop_with_one_line(name, message):
    with pytest.raises(SemalignError) as raised:
        parse_variant(name)
    assert str(raised.value) == message
    with pytest.raises(SemalignError) as raised:
        TrainConfig(objective=name)
    assert str(raised.value) == message


def test_a_variant_map_must_be_one_align_made():
    assert parse_variant("v2-ridge", ["semantic", "ridge"]) == Variant("v2", "ridge", 0)
    assert parse_variant("kd", ["ridge"]) == Variant("kd", None, 0)  # no targets: any maps will do
    with pytest.raises(SemalignError) as raised:
        parse_variant("v1-ridge", ["semantic"])
    assert str(raised.value) == (
        "train.objectives entry 'v1-ridge' trains on ridge targets but align.maps is ['semantic']; "
        "add ridge to align.maps"
    )
    with pytest.raises(SemalignError, match="add semantic to align.maps$"):
        parse_variant("v1-s1", ["ridge"])


def test_the_seed_suffix_adds_to_train_seed_and_the_maps_are_align_s():
    assert TrainConfig(objective="sft-s2", seed=5).run_seed == 7
    assert TrainConfig(objective="sft", seed=5).run_seed == 5
    assert variants.TARGET_MAPS == TARGET_MAPS  # the student side names the maps align makes
