"""Turning model outputs into answers: the final number of a worked solution, an MMLU letter, runnable code.

Numbers: `extract_strict_number` (the marked answer) and `extract_last_number` return the text of one
number, normalised as task golds are (`semalign.tasks.normalize_number`: no commas or '$', '3.0' -> '3',
'-0.50' -> '-0.5'). A fraction 'a/b' is kept as written (sign included, e.g. '-3/4'), not converted to
a decimal that would need rounding; `numbers_match` compares values exactly, so '3/4' matches '0.75'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

from semalign.errors import SemalignError
from semalign.tasks import LETTERS as MMLU_LETTERS
from semalign.tasks import normalize_number

__all__ = [
    "MMLU_LETTERS",
    "extract_code",
    "extract_last_number",
    "extract_strict_number",
    "mmlu_choice",
    "numbers_match",
]

TOLERANCE = 1e-6
# A number starts where no word or number does: "Step2" holds none, and "-" after a digit is a hyphen
# or a range dash ("3-4", "2023-01-05"), not a minus sign.
_NUMBER = r"(?<![\w.])-?\$?(?:\d+/\d+(?!\.\d)|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_MARKED = re.compile(r"####\s*(" + _NUMBER + ")")
_STATED = re.compile(r"answer\s+is[\s:*]*(" + _NUMBER + ")", re.IGNORECASE)
_ANY = re.compile(_NUMBER)
# One fenced block: its language tag, then its body up to the closing fence or the end of a cut-off answer.
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "python3", "py")


def extract_strict_number(text: str) -> str | None:
    """The marked answer of a GSM8K-style solution: the number after the last '####', else after the last
    'the answer is'; None if the text marks none (lm-eval's gsm8k "strict-match")."""
    text = _unicode_minus(text)
    for pattern in (_MARKED, _STATED):
        found = pattern.findall(text)
        if found:
            return _normalise(found[-1])
    return None


def extract_last_number(text: str) -> str | None:
    """The last number anywhere in the text; None if it has none (lm-eval's gsm8k "flexible-extract")."""
    found = _ANY.findall(_unicode_minus(text))
    return _normalise(found[-1]) if found else None


def numbers_match(pred: str | None, gold: str) -> bool:
    """Whether a predicted number equals the gold one within TOLERANCE. A missing or unreadable
    prediction is simply wrong; an unreadable gold is a data error."""
    gold_value = _value(gold)
    if gold_value is None:
        raise SemalignError(f"gold answer {gold!r} is not a number; check the task file's answer column")
    pred_value = _value(pred) if pred is not None else None
    return pred_value is not None and abs(pred_value - gold_value) <= TOLERANCE


def mmlu_choice(logprobs: Sequence[float]) -> str:
    """The letter of the highest of four option log-probs (A, B, C, D order); a tie goes to the earlier."""
    if len(logprobs) != len(MMLU_LETTERS) or any(math.isnan(x) for x in logprobs):
        raise SemalignError(
            f"MMLU log-probs {list(logprobs)} must be {len(MMLU_LETTERS)} numbers, none NaN; "
            "score exactly the options A-D"
        )
    return MMLU_LETTERS[max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))]


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The code in a completion; instruct models answer in markdown.

    The code is the first ```python (or ```py, ```python3, or untagged ```) block, to its closing fence or
    to the end of a cut-off answer; without such a block it is the whole completion.
    entry_point=None (MBPP): the code is a whole program and is returned as is.
    With an entry_point (HumanEval), the result is what goes right after the prompt:
    - if the code defines `def entry_point(` at the top level, it is a full solution and is returned
      after a newline: placed after the prompt, it ends the prompt's docstring-only function and redefines
      it, while the prompt's imports and helper functions stay in scope;
    - otherwise the code continues the function body and is returned as is (base models, or a fenced body).
    """
    blocks = (m.group(2) for m in _FENCE.finditer(completion) if m.group(1).lower() in _PYTHON_TAGS)
    code = next(blocks, completion)
    if entry_point is not None and re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return "\n" + code
    return code


def _unicode_minus(text: str) -> str:
    return text.replace("\u2212", "-")  # Unicode minus, as some tokenisers write it


def _normalise(number: str) -> str:
    cleaned = number.replace(",", "").replace("$", "")
    return cleaned if "/" in cleaned else normalize_number(cleaned)


def _value(text: str) -> Fraction | None:
    cleaned = text.strip().replace(",", "").replace("$", "")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None
