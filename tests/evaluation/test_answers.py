"""Answer extraction: a table of real-looking model outputs for numbers, letters and code."""

import json
from pathlib import Path

import pytest

from semalign.errors import SemalignError
from semalign.evaluation.answers import (
    MMLU_LETTERS,
    extract_code,
    extract_last_number,
    extract_strict_number,
    mmlu_choice,
    numbers_match,
)
from semalign.evaluation.sandbox import check_humaneval

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize(
    "text, strict, last",
    [
        ("She pays 3 * 4 = 12 dollars.\n#### 1,234", "1234", "1234"),
        ("#### 5 but then the answer is 6", "5", "6"),  # '####' wins over 'the answer is'
        ("The answer is 6, not 7", "6", "7"),  # strict: 'the answer is'; flexible: the last number
        ("So the answer is 42.", "42", "42"),  # sentence full stop is not a decimal point
        ("The answer is: $3.50", "3.5", "3.5"),
        ("The final answer is **18**", "18", "18"),
        ("the answer is -7", "-7", "-7"),
        ("It drops to \u221212 degrees", None, "-12"),  # Unicode minus
        ("First 3 apples, then 4.0 apples", None, "4"),  # '4.0' -> '4'
        ("That is 0.50 of it", None, "0.5"),
        ("Total: 1,000,000 dollars", None, "1000000"),
        ("It costs $.5", None, "0.5"),
        ("So the answer is 3/4.", "3/4", "3/4"),  # fractions are kept as written
        ("A loss of -3/4", None, "-3/4"),
        ("Read pages 3-4", None, "4"),  # a range dash is not a minus sign
        ("Step2 needs 5th place", None, "5"),  # digits glued to a word are not a number
        ("the answer is \u22122", "-2", "-2"),
        ("no number here", None, None),
        ("", None, None),
    ],
)
def test_strict_and_flexible_number_extraction(text, strict, last):
    assert extract_strict_number(text) == strict
    assert extract_last_number(text) == last


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("3/4", "0.75", True),
        ("72", "72", True),
        ("1,234", "1234", True),
        ("1234.0000001", "1234", True),
        ("1.00001", "1", False),
        ("-2", "2", False),
        ("0.3333333", "1/3", True),
        ("0.33", "1/3", False),
        ("5/0", "5", False),
        ("abc", "3", False),
        (None, "3", False),
    ],
)
def test_numbers_match(pred, gold, expected):
    assert numbers_match(pred, gold) is expected


def test_unreadable_gold_is_a_data_error():
    with pytest.raises(SemalignError, match="'seven'"):
        numbers_match("7", "seven")


@pytest.mark.parametrize(
    "logprobs, letter",
    [([-1.0, -0.5, -3.0, -2.0], "B"), ([-4.0, -3.0, -2.0, -0.1], "D"), ([0.0, 0.0, -1.0, -1.0], "A")],
)
def test_mmlu_choice_is_the_argmax_with_ties_to_the_earlier_letter(logprobs, letter):
    assert MMLU_LETTERS == ("A", "B", "C", "D")
    assert mmlu_choice(logprobs) == letter


@pytest.mark.parametrize("logprobs", [[-1.0, -2.0, -3.0], [-1.0, float("nan"), -2.0, -3.0]])
def test_mmlu_choice_refuses_anything_but_four_numbers(logprobs):
    with pytest.raises(SemalignError, match="4 numbers"):
        mmlu_choice(logprobs)


@pytest.mark.parametrize(
    "completion, entry_point, expected",
    [
        ("    return a + b\n", "add", "    return a + b\n"),  # base model body
        ("Sure:\n```python\n    return a + b\n```\nDone.", "add", "    return a + b\n"),  # fenced body
        ("```python\ndef add(a, b):\n    return a + b\n```\n", "add", "\ndef add(a, b):\n    return a + b\n"),
        ("```py\ndef add(a, b):\n    return a + b", "add", "\ndef add(a, b):\n    return a + b"),  # cut off
        ("```bash\npip install x\n```\n```python\nx = 1\n```", None, "x = 1\n"),  # first python block
        ("```\ndef f():\n    pass\n```", None, "def f():\n    pass\n"),  # untagged, MBPP
        ("def f():\n    pass\n", None, "def f():\n    pass\n"),
        (
            "```python\ndef add_all(a):\n    return a\n```",
            "add",
            "def add_all(a):\n    return a\n",
        ),  # other name
    ],
)
def test_extract_code(completion, entry_point, expected):
    assert extract_code(completion, entry_point) == expected


def test_extracted_full_redefinition_runs_after_the_prompt():
    problem = json.loads((FIXTURES / "humaneval.jsonl").read_text().splitlines()[0])
    # Uses List from the prompt's imports, which the fenced answer does not repeat.
    answer = (
        f"Here is the function:\n```python\ndef {problem['entry_point']}(numbers: List[float], "
        f"threshold: float) -> bool:\n{problem['canonical_solution']}```\n"
    )
    completion = extract_code(answer, problem["entry_point"])
    result = check_humaneval(
        problem["prompt"], completion, problem["test"], problem["entry_point"], timeout_s=3.0
    )
    assert result.passed, result.stderr_tail
