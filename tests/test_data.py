"""Splits, prompt formats, tokenisation with answer masks and truncation, and the saved split round trip."""

import json
import random
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml

from semalign.data import (
    DataConfig,
    Example,
    TaskConfig,
    data_fingerprint,
    encode,
    end_of_turn,
    format_example,
    load_split,
    prompt_text,
    save_split,
    split_items,
)
from semalign.errors import SemalignError
from semalign.tasks import TaskItem
from semalign.testing import tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
STAGES = Path(__file__).parents[1] / "stages"


def _math_items(n: int) -> list[TaskItem]:
    return [
        TaskItem("asdiv", f"asdiv/{i:05d}", f"Alice has {i} apples and buys 4 more. How many?", str(i + 4))
        for i in range(n)
    ]


MMLU = TaskItem("mmlu", "mmlu/00000", "What is 12 plus 30?", "C", choices=("12", "30", "42", "24"))
CODE = TaskItem(
    "humaneval", "humaneval/HumanEval/0", "def add(a, b):\n", "    return a + b\n", entry_point="add"
)


def _ids(splits):
    return {name: [item.item_id for item in items] for name, items in splits.items()}


def test_splits_are_disjoint_sized_and_independent_of_input_order():
    items = _math_items(100)
    sizes = TaskConfig(evaluation=20, attribution=10, alignment=15, training=30, agreement=12)
    splits = split_items(items, sizes, seed=7)
    assert {name: len(part) for name, part in splits.items()} == {
        "evaluation": 20,
        "attribution": 10,
        "alignment": 15,
        "training": 30,
        "agreement": 12,
    }
    all_ids = [i for ids in _ids(splits).values() for i in ids]
    assert len(set(all_ids)) == len(all_ids) == 87
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    assert _ids(split_items(shuffled, sizes, seed=7)) == _ids(splits)
    assert _ids(split_items(items, sizes, seed=8))["evaluation"] != _ids(splits)["evaluation"]


def test_evaluation_set_does_not_move_when_other_sizes_change():
    items = _math_items(100)
    base = split_items(items, TaskConfig(evaluation=20, attribution=10, alignment=10, training=10), seed=3)
    more = split_items(items, TaskConfig(evaluation=20, attribution=5, alignment=10, training=55), seed=3)
    assert _ids(more)["evaluation"] == _ids(base)["evaluation"]
    grown = split_items(items, TaskConfig(evaluation=20, attribution=10, alignment=10, training=60), seed=3)
    assert _ids(grown)["training"][:10] == _ids(base)["training"]  # training grows, it does not reshuffle


def test_adding_the_agreement_split_changes_no_other_split_and_takes_unused_items():
    items = _math_items(100)
    sizes = {"evaluation": 20, "attribution": 10, "alignment": 10, "training": 10}
    before = _ids(split_items(items, TaskConfig(**sizes), seed=3))
    after = _ids(split_items(items, TaskConfig(**sizes, agreement=30), seed=3))
    assert before["agreement"] == [] and len(after["agreement"]) == 30
    assert after | {"agreement": []} == before
    used = {i for name, ids in before.items() for i in ids}
    assert not used & set(after["agreement"])  # no attribution, alignment or training item is held out
    assert not TaskConfig(evaluation=1, agreement=1).evaluation_only


def test_too_large_sizes_and_duplicate_ids_are_refused():
    with pytest.raises(SemalignError, match=r"ask for 101 items .* only 100 exist"):
        split_items(_math_items(100), TaskConfig(evaluation=50, training=51), seed=0)
    with pytest.raises(SemalignError, match="not unique"):
        split_items(_math_items(3) * 2, TaskConfig(evaluation=1), seed=0)


def test_data_config_builds_task_configs_and_rejects_bad_values():
    config = DataConfig(tasks={"mmlu": {"evaluation": 5, "training": 10}}, max_length=64)
    assert config.tasks["mmlu"] == TaskConfig(path=None, evaluation=5, training=10)
    with pytest.raises(SemalignError, match="unknown task.*'mmlu_pro'"):
        DataConfig(tasks={"mmlu_pro": {}})
    with pytest.raises(SemalignError, match="data.tasks.mmlu.training is -1"):
        DataConfig(tasks={"mmlu": {"training": -1}})
    with pytest.raises(SemalignError, match=r"data.tasks.gsm8k: unknown key\(s\) \['train'\]"):
        DataConfig(tasks={"gsm8k": {"train": 3}})


def test_prompt_formats():
    assert format_example(MMLU) == Example(
        "What is 12 plus 30?\nA. 12\nB. 30\nC. 42\nD. 24\nAnswer:", "C", " "
    )
    gsm = TaskItem("gsm8k", "gsm8k/00000", "What is 2+1?", "3", solution="2+1=3\n#### 3")
    assert format_example(gsm) == Example("Question: What is 2+1?\nAnswer:", "2+1=3\n#### 3", " ")
    assert format_example(_math_items(1)[0]).target == "4"
    assert format_example(CODE) == Example("def add(a, b):\n", "    return a + b\n", "")
    mbpp = TaskItem(
        "mbpp",
        "mbpp/1",
        "Write add.",
        "def add(a, b): return a + b",
        test_list=("assert add(1, 2) == 3", "assert add(0, 0) == 0"),
    )
    assert format_example(mbpp).prompt == (
        "Write add.\nYour code should pass these tests:\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n"
    )


def test_plain_encoding_masks_exactly_the_target_and_eos():
    tok = tiny_tokenizer()
    items = [MMLU, CODE, *_math_items(2)]
    enc = encode(items, tok, max_length=64, chat_template=False)
    assert (
        enc.input_ids.shape
        == enc.attention_mask.shape
        == enc.answer_mask.shape
        == enc.labels.shape
        == (4, 64)
    )
    assert enc.input_ids.dtype == torch.int64 and enc.answer_mask.dtype == torch.bool
    for row, item in enumerate(items):
        example = format_example(item)
        answer = enc.input_ids[row][enc.answer_mask[row]].tolist()
        assert answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]) == example.sep + example.target
        real = enc.input_ids[row][enc.attention_mask[row].bool()].tolist()
        assert tok.decode(real) == example.prompt + example.sep + example.target + tok.eos_token
        n_real = len(real)  # right padding: real tokens first, then pad tokens outside every mask
        assert enc.attention_mask[row, :n_real].all() and not enc.attention_mask[row, n_real:].any()
        assert (enc.input_ids[row, n_real:] == tok.pad_token_id).all() and not enc.answer_mask[
            row, n_real:
        ].any()
    assert torch.equal(
        enc.labels, torch.where(enc.answer_mask, enc.input_ids, torch.full_like(enc.input_ids, -100))
    )
    assert enc.stats["truncated_prompts"] == enc.stats["truncated_answers"] == 0


def test_chat_encoding_wraps_the_prompt_and_closes_with_end_of_turn():
    tok = tiny_tokenizer()
    assert end_of_turn(tok) == "<|im_end|>\n"
    enc = encode([MMLU], tok, max_length=96, chat_template=True)
    rendered = prompt_text(tok, format_example(MMLU), chat_template=True)
    assert rendered == f"<|im_start|>user\n{format_example(MMLU).prompt}<|im_end|>\n<|im_start|>assistant\n"
    real = enc.input_ids[0][enc.attention_mask[0].bool()].tolist()
    n_prompt = int(enc.answer_mask[0].nonzero()[0])
    assert tok.decode(real[:n_prompt]) == rendered
    assert tok.decode(enc.input_ids[0][enc.answer_mask[0]].tolist()) == "C<|im_end|>\n"


def test_chat_mode_without_a_template_is_refused():
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(SemalignError, match="set data.chat_template: false"):
        encode([MMLU], tok, max_length=32, chat_template=True)


def test_long_prompt_is_cut_on_the_left_and_the_answer_kept():
    tok = tiny_tokenizer()
    long_item = TaskItem("asdiv", "asdiv/00000", "Alice has 3 apples. " * 40 + "How many?", "3")
    full = encode([long_item], tok, max_length=1024, chat_template=False)
    n_full = int(full.attention_mask.sum())
    short = encode([long_item], tok, max_length=24, chat_template=False)
    assert short.stats["truncated_prompts"] == 1 and short.stats["truncated_answers"] == 0
    assert short.attention_mask.all()  # the row is filled to max_length
    assert torch.equal(short.input_ids[0], full.input_ids[0, n_full - 24 : n_full])  # the last 24 tokens
    assert tok.decode(short.input_ids[0][short.answer_mask[0]].tolist()) == " 3" + tok.eos_token


def test_answer_longer_than_max_length_is_cut_after_one_prompt_token():
    tok = tiny_tokenizer()
    item = TaskItem("humaneval", "humaneval/x", "def f():\n", "    return 1\n" * 20)
    full = encode([item], tok, max_length=1024, chat_template=False)
    n_prompt = int(full.answer_mask[0].nonzero()[0])
    enc = encode([item], tok, max_length=16, chat_template=False)
    assert enc.stats["truncated_answers"] == 1 and enc.stats["truncated_prompts"] == 1
    assert enc.input_ids[0, 0] == full.input_ids[0, n_prompt - 1] and not enc.answer_mask[0, 0]
    assert torch.equal(enc.input_ids[0, 1:], full.input_ids[0, n_prompt : n_prompt + 15])
    assert enc.answer_mask[0, 1:].all()


def test_empty_split_encodes_to_zero_rows():
    enc = encode([], tiny_tokenizer(), max_length=8, chat_template=True)
    assert enc.input_ids.shape == (0, 8) and enc.stats["examples"] == 0


def test_save_load_round_trip_and_tamper_check(tmp_path):
    tok = tiny_tokenizer()
    items = [MMLU, CODE, *_math_items(3)]
    enc = encode(items, tok, max_length=48, chat_template=True)
    summary = save_split(tmp_path, "training", enc, items)
    assert summary["tasks"] == {"asdiv": 3, "humaneval": 1, "mmlu": 1}
    assert summary["fingerprint"] == data_fingerprint(enc.tensors())
    assert json.loads((tmp_path / "training" / "summary.json").read_text()) == summary
    loaded, loaded_items = load_split(tmp_path, "training")
    assert loaded_items == items
    for name, tensor in enc.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor) and loaded.tensors()[name].dtype == tensor.dtype
    assert loaded.stats == enc.stats

    changed = dict(enc.tensors(), input_ids=enc.input_ids.clone())
    changed["input_ids"][0, 0] += 1
    assert data_fingerprint(changed) != summary["fingerprint"]
    save_split(tmp_path / "other", "training", encode(items[:2], tok, 48, True), items[:2])
    (tmp_path / "training" / "tensors.safetensors").write_bytes(
        (tmp_path / "other" / "training" / "tensors.safetensors").read_bytes()
    )
    with pytest.raises(SemalignError, match="changed after it was written"):
        load_split(tmp_path, "training")
    with pytest.raises(SemalignError, match="'evaluation' is missing"):
        load_split(tmp_path, "evaluation")


# Evaluation-only tasks


def test_a_task_with_only_an_evaluation_size_is_evaluation_only():
    config = DataConfig(
        tasks={
            "asdiv": {"evaluation": 3},
            "mmlu": {"evaluation": 2, "attribution": 1, "alignment": 1, "training": 1},
            "gsm8k": {"evaluation": 2, "training": 1},
        }
    )
    assert config.tasks["asdiv"] == TaskConfig(evaluation=3) and config.tasks["asdiv"].evaluation_only
    assert not config.tasks["mmlu"].evaluation_only
    assert not config.tasks["gsm8k"].evaluation_only  # any transfer split makes it a transfer task
    splits = split_items(_math_items(10), config.tasks["asdiv"], seed=0)
    assert {name: len(part) for name, part in splits.items()} == {
        "evaluation": 3,
        "attribution": 0,
        "alignment": 0,
        "training": 0,
        "agreement": 0,
    }
    # The evaluation items are those a full-sized split of the same task would evaluate on.
    full = split_items(
        _math_items(10), TaskConfig(evaluation=3, attribution=2, alignment=2, training=2), seed=0
    )
    assert _ids(splits)["evaluation"] == _ids(full)["evaluation"]


def test_empty_splits_are_written_but_refused_when_loaded(tmp_path):
    tok = tiny_tokenizer()
    folder = tmp_path / "asdiv"
    splits = split_items(_math_items(5), TaskConfig(evaluation=2), seed=0)
    for name, items in splits.items():
        save_split(folder, name, encode(items, tok, 32, True), items)
    assert sorted(path.name for path in folder.iterdir()) == sorted(splits)
    _, items = load_split(folder, "evaluation")
    assert [item.item_id for item in items] == _ids(splits)["evaluation"]
    for name in ("attribution", "alignment", "training", "agreement"):
        with pytest.raises(
            SemalignError,
            match=rf"'{name}' of asdiv is empty: data.tasks.asdiv.{name} is 0; "
            r".*remove asdiv from transfer.tasks",
        ):
            load_split(folder, name)
    save_split(tmp_path / "mmlu", "evaluation", encode([], tok, 32, True), [])
    with pytest.raises(SemalignError, match=r"data.tasks.mmlu.evaluation is 0; set it > 0 to evaluate mmlu"):
        load_split(tmp_path / "mmlu", "evaluation")
    with pytest.raises(SemalignError, match=r"missing from .*gsm8k; list gsm8k under data.tasks"):
        load_split(tmp_path / "gsm8k", "training")


def test_data_stage_writes_an_evaluation_only_task(tmp_path, monkeypatch):
    tiny_tokenizer().save_pretrained(tmp_path / "data/models/teacher")
    params = {
        "data": {
            "max_length": 48,
            "seed": 0,
            "chat_template": True,
            "tasks": {
                "asdiv": {"path": str(FIXTURES / "asdiv.jsonl"), "evaluation": 3},
                "mmlu": {"evaluation": 10**6},
            },
        }
    }  # other tasks are not read
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    paths = "--tokenizer data/models/teacher --out data/tasks/asdiv --metrics metrics/data/asdiv.json"
    monkeypatch.setattr(sys, "argv", ["data.py", "--task", "asdiv", *paths.split()])
    runpy.run_path(str(STAGES / "data.py"), run_name="__main__")
    metrics = json.loads((tmp_path / "metrics/data/asdiv.json").read_text())
    assert metrics["evaluation_only"] is True
    assert metrics["items"] == 4 and sum(metrics["skipped"].values()) == 2  # "Mrs. Hilt", "3:30 p.m."
    assert {name: s["examples"] for name, s in metrics["splits"].items()} == {
        "evaluation": 3,
        "attribution": 0,
        "alignment": 0,
        "training": 0,
        "agreement": 0,
    }
    encoded, items = load_split(tmp_path / "data/tasks/asdiv", "evaluation")
    assert encoded.input_ids.shape == (3, 48) and {item.task for item in items} == {"asdiv"}
