"""params.yaml sections are checked up front: unknown keys, wrong types and out-of-range values stop with one
line naming the key and the fix (issue 21's probes, read the way the stages read them)."""

import pytest
import yaml

from semalign.align.alignment import AlignConfig
from semalign.config import params_section, read_section
from semalign.data import DataConfig
from semalign.errors import SemalignError
from semalign.evaluation.runner import EvalConfig
from semalign.student.training import TrainConfig
from semalign.teacher.bases import BasesConfig
from semalign.teacher.cache import CacheConfig

SECTIONS = {"train": TrainConfig, "align": AlignConfig, "cache": CacheConfig, "bases": BasesConfig}


def _read(tmp_path, section: str, values: dict, **kwargs):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({section: values}))
    return read_section(SECTIONS[section], section, params, **kwargs)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (
            "train",
            {"lerning_rate": 1e-4},
            r"params.yaml train: unknown key\(s\) \['lerning_rate'\]; known keys",
        ),
        ("train", {"batch_size": -4}, "params.yaml train.batch_size is -4; set a positive integer"),
        ("train", {"epochs": -1}, "params.yaml train.epochs is -1; set a positive integer"),
        ("train", {"micro_batch_size": 0}, "params.yaml train.micro_batch_size is 0; set a positive integer"),
        ("train", {"lr": -0.5}, "params.yaml train.lr is -0.5; set a positive number"),
        ("train", {"lora_dropout": 1.0}, r"params.yaml train.lora_dropout is 1.0; set a number in \[0, 1\)"),
        ("train", {"weight_decay": -0.1}, "params.yaml train.weight_decay is -0.1; set a number >= 0"),
        ("train", {"epochs": 1.5}, "params.yaml train.epochs is 1.5; set an integer"),
        ("train", {"epochs": True}, "params.yaml train.epochs is True; set an integer"),
        ("train", {"lr": "3e-4"}, r"params.yaml train.lr is '3e-4'; set a number \(with a dot, e.g. 3.0e-4"),
        (
            "train",
            {"target_modules": "up_proj"},
            "params.yaml train.target_modules is 'up_proj'; set a list of",
        ),
        ("align", {"chunk_rows": -16}, "params.yaml align.chunk_rows is -16; set a positive integer"),
        (
            "align",
            {"control_counts": [256, 0]},
            r"params.yaml align.control_counts\[1\] is 0; set a positive",
        ),
        ("align", {"maps": "ridge"}, "params.yaml align.maps is 'ridge'; set a list of strings"),
        (
            "align",
            {"maps": ["semantic", "affine"]},
            r"^align.maps \['semantic', 'affine'\]: map 'affine' is unknown; use names from "
            r"\['semantic', 'ridge', 'procrustes', 'random'\]$",
        ),
        (
            "align",
            {"maps": ["ridge", "semantic", "ridge"]},
            r"^align.maps \['ridge', 'semantic', 'ridge'\] lists 'ridge' twice; list each map once$",
        ),
        (
            "align",
            {"maps": []},
            r"^align.maps is empty; set a non-empty list of names from \['semantic', 'ridge', 'procrustes', "
            r"'random'\]$",
        ),
        ("train", {"kd_weight": 1.5}, r"params.yaml train.kd_weight is 1.5; set a number in \[0, 1\]"),
        ("train", {"kd_weight": -0.1}, r"params.yaml train.kd_weight is -0.1; set a number in \[0, 1\]"),
        ("cache", {"writers": 0}, "params.yaml cache.writers is 0; set a positive integer"),
        ("cache", {"layers": [0, -1]}, r"params.yaml cache.layers\[1\] is -1; set an integer >= 0"),
        ("bases", {"chunk_rows": -16}, "params.yaml bases.chunk_rows is -16; set a positive integer"),
    ],
)
def test_bad_values_stop_with_one_line_naming_the_key(tmp_path, section, values, message):
    with pytest.raises(SemalignError, match=message) as raised:
        _read(tmp_path, section, values)
    assert "\n" not in str(raised.value)


def test_good_values_pass_and_ints_are_numbers(tmp_path):
    config = _read(tmp_path, "train", {"lr": 1, "batch_size": 8, "micro_batch_size": 2, "lora_dropout": 0.0})
    assert (config.lr, config.batch_size, config.lora_dropout) == (1, 8, 0.0)
    cache = _read(tmp_path, "cache", {"layers": [0, 3]})
    assert cache.layers == [0, 3]
    assert _read(tmp_path, "cache", {"layers": "all"}).layers == "all"


def test_nested_values_are_checked_with_their_dotted_name(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"limit": {"mmlu": 0}}, "data": {"tasks": {}}}))
    with pytest.raises(SemalignError, match="params.yaml evaluate.limit.mmlu is 0; set a positive integer"):
        read_section(EvalConfig, "evaluate", params)
    with pytest.raises(
        SemalignError, match="params.yaml data.tasks.mmlu.training is -1; set an integer >= 0"
    ):
        DataConfig(tasks={"mmlu": {"training": -1}})
    params.write_text(yaml.safe_dump({"data": {"tasks": {}, "max_length": 1}}))
    with pytest.raises(SemalignError, match="params.yaml data.max_length is 1; set an integer >= 2"):
        read_section(DataConfig, "data", params)


def test_a_key_the_stage_sets_may_not_be_set_in_the_section(tmp_path):
    with pytest.raises(SemalignError, match=r"params.yaml train: \['objective'\] are set by the stage"):
        _read(tmp_path, "train", {"objective": "v2"}, objective="v1")
    assert (
        _read(tmp_path, "train", {"objectives": ["v1"]}, drop=("objectives",), objective="v2").objective
        == "v2"
    )


def test_missing_or_malformed_sections_name_the_fix(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": [1, 2]}))
    with pytest.raises(SemalignError, match="params.yaml train is \\[1, 2\\]; set a mapping"):
        read_section(TrainConfig, "train", params)
    with pytest.raises(SemalignError, match="has no 'align'"):
        params_section("align", params)
    params.write_text("")
    with pytest.raises(SemalignError, match="holds no sections"):
        params_section("train", params)
