"""Scoring a model on a task's evaluation items (paper §5.1), resumably, and summarising the outcome.

Every task reads the prompt the training data uses (`semalign.data.prompt_text`), zero-shot:
- MMLU: the next-token log-probs of the four answer letters right after the prompt; the highest wins.
  The letter is the first token of the training target: " A" after "Answer:" in plain text (as in
  lm-eval-harness), "A" at the start of the assistant reply in chat mode.
- GSM8K / ASDiv: a greedy completion; its final number (`extract_final_number`) against the gold.
- HumanEval / MBPP: greedy (or sampled) completions; the code in them runs against the task's tests in
  the sandbox. HumanEval programs are the raw task prompt + the extracted code, as in the official harness.
Plain-text prompts have no end of turn to stop at, so completions are also cut at the usual stop strings.

Results file (jsonl): a header line {"identity": ...}, then one line per item, appended and fsync'ed as
each batch finishes. A rerun keeps the items already there and computes only the others; a half-written
last line (a killed run) is dropped; a header that differs from this run's (another model or other
decoding settings) means the old results are discarded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from semalign.config import at_least, positive
from semalign.data import end_of_turn, format_example, prompt_text
from semalign.distributed import Ranks, Shard
from semalign.errors import SemalignError
from semalign.evaluation import generation
from semalign.evaluation.answers import extract_code, extract_final_number, mmlu_choice, numbers_match
from semalign.evaluation.metrics import mcnemar, paired_bootstrap, pass_at_k, summarise
from semalign.evaluation.sandbox import humaneval_program, mbpp_program, run_many
from semalign.progress import progress
from semalign.tasks import LETTERS, TASKS, TaskItem

MATH_TASKS = ("gsm8k", "asdiv")
CODE_TASKS = ("humaneval", "mbpp")
# Plain-text stop strings: lm-eval-harness (math) and the Codex paper (HumanEval); MBPP's solution is a
# whole program, so it stops only where the tests or a script body would begin.
PLAIN_STOPS = {
    "gsm8k": ("\nQuestion:",),
    "asdiv": ("\nQuestion:",),
    "humaneval": ("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
    "mbpp": ("\nassert", "\nprint(", "\nif __name__"),
}
# The settings an item's result depends on, per task; the others (batch_size, limit, workers) decide only
# which items are scored or how fast, so changing them keeps a results file valid.
_RESULT_SETTINGS = {
    "mmlu": ("chat_template",),
    **dict.fromkeys(MATH_TASKS, ("chat_template", "max_new_tokens")),
    **dict.fromkeys(
        CODE_TASKS, ("chat_template", "max_new_tokens", "timeout_s", "n_samples", "temperature", "seed")
    ),
}
_MMLU_PROBE = TaskItem("mmlu", "probe", "?", "A", ("", "", "", ""))


@dataclass(frozen=True)
class EvalConfig:
    """The `evaluate` section.

    batch_size: prompts per forward pass or generate call. max_new_tokens: completion budget (math, code), one
    number or one per task ({"asdiv": 256, "humaneval": 384}: a math answer is shorter than a program).
    timeout_s: wall-clock limit per program in the sandbox. n_samples, temperature: completions per code
    problem and their sampling temperature (1 and 0: greedy pass@1; n > 1 needs temperature > 0 and adds
    pass@k); math is always greedy. limit: items per task, the first ones of the evaluation split ({"mmlu":
    300}; a missing task
    or None: all). chat_template: prompts in the chat template (the stage takes it from data.chat_template,
    so evaluation reads the prompts training wrote). workers: sandbox processes in parallel. seed: of torch's
    RNG for sampling.
    """

    batch_size: int = positive(8)
    max_new_tokens: int | dict[str, int] = positive(512)
    timeout_s: float = positive(10.0)
    n_samples: int = positive(1)
    temperature: float = at_least(0.0, 0)
    limit: dict[str, int | None] | None = positive(None)
    chat_template: bool = True
    workers: int = positive(2)
    seed: int = at_least(0, 0)

    def __post_init__(self):
        for name in ("batch_size", "n_samples", "workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SemalignError(f"evaluate.{name} is {getattr(self, name)!r}; use an integer >= 1")
        budgets = (
            self.max_new_tokens if isinstance(self.max_new_tokens, dict) else {None: self.max_new_tokens}
        )
        for task, count in budgets.items():
            name = "evaluate.max_new_tokens" + (f".{task}" if task else "")
            if task is not None and task not in TASKS:
                raise SemalignError(
                    f"evaluate.max_new_tokens has unknown task {task!r}; known tasks are {list(TASKS)}"
                )
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise SemalignError(f"{name} is {count!r}; use an integer >= 1")
        if not self.timeout_s > 0:
            raise SemalignError(f"evaluate.timeout_s is {self.timeout_s!r}; use a number of seconds > 0")
        if not self.temperature >= 0:
            raise SemalignError(f"evaluate.temperature is {self.temperature!r}; use 0 (greedy) or more")
        if self.n_samples > 1 and self.temperature == 0:
            raise SemalignError(
                f"evaluate.n_samples is {self.n_samples} but temperature is 0: greedy samples are "
                "identical; set temperature > 0 (e.g. 0.8) or n_samples: 1"
            )
        for task, count in (self.limit or {}).items():
            if task not in TASKS:
                raise SemalignError(
                    f"evaluate.limit has unknown task {task!r}; known tasks are {list(TASKS)}"
                )
            if count is not None and (not isinstance(count, int) or count < 1):
                raise SemalignError(
                    f"evaluate.limit.{task} is {count!r}; use an integer >= 1 or null for all"
                )

    def new_tokens(self, task: str) -> int:
        """The completion budget of `task`: max_new_tokens, or its entry when given per task."""
        if not isinstance(self.max_new_tokens, dict):
            return self.max_new_tokens
        if task not in self.max_new_tokens:
            raise SemalignError(
                f"evaluate.max_new_tokens has no entry for {task}; add {task}: <tokens> to it "
                "or give one number for every task"
            )
        return self.max_new_tokens[task]


@dataclass(frozen=True)
class ItemResult:
    """One item's outcome: whether it was right, the answer taken (letter, number or code), and the rest
    (log-probs, the raw completion, sandbox status) in `detail`."""

    item_id: str
    correct: bool
    prediction: str
    detail: dict[str, Any] = field(default_factory=dict)


OnBatch = Callable[[list[ItemResult]], None]
_FIELDS = {"item_id", "correct", "prediction", "detail"}


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, chat_template: bool) -> list[int]:
    """Token ids of the MMLU answers A-D as the first target token: " A".. in plain text, "A".. in chat."""
    sep = "" if chat_template else format_example(_MMLU_PROBE).sep
    ids = []
    for letter in LETTERS:
        tokens = tokenizer(sep + letter, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise SemalignError(
                f"MMLU answer {sep + letter!r} is {len(tokens)} tokens {tokens} under this tokenizer; "
                "next-token scoring needs one token per letter: use a tokenizer that has it "
                "or flip data.chat_template"
            )
        ids.append(tokens[0])
    return ids


def score_mmlu(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence,
    chat_template: bool,
    batch_size: int,
    on_batch: OnBatch | None = None,
    shard: Shard = Shard(),
) -> list[ItemResult]:
    """Zero-shot MMLU: the letter with the highest next-token log-prob after the prompt."""
    letter_ids = answer_token_ids(tokenizer, chat_template)
    pad_id = generation.pad_id_of(tokenizer)
    prompts = [prompt_text(tokenizer, format_example(item), chat_template) for item in items]
    rows = tokenizer(prompts, add_special_tokens=not chat_template)["input_ids"] if prompts else []

    def score(batch: list[int]) -> list[ItemResult]:
        logprobs = generation.next_token_logprobs(model, [rows[i] for i in batch], pad_id)[:, letter_ids]
        results = []
        for i, letter_logprobs in zip(batch, logprobs.double().tolist()):
            choice = mmlu_choice(letter_logprobs)
            # How much of the next-token mass is on A-D at all: a low value means the format was not followed.
            mass = float(torch.tensor(letter_logprobs, dtype=torch.float64).exp().sum())
            results.append(
                ItemResult(
                    items[i].item_id,
                    choice == items[i].answer,
                    choice,
                    {"logprobs": dict(zip(LETTERS, letter_logprobs)), "letter_mass": mass},
                )
            )
        return results

    return _batched(items, [len(row) for row in rows], batch_size, score, on_batch, "evaluate mmlu", shard)


def score_math(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence,
    chat_template: bool,
    batch_size: int,
    max_new_tokens: int,
    on_batch: OnBatch | None = None,
    shard: Shard = Shard(),
) -> list[ItemResult]:
    """Greedy worked answers; right when their final number equals the gold answer."""
    prompts = [prompt_text(tokenizer, format_example(item), chat_template) for item in items]
    stop_ids = stop_token_ids(model, tokenizer, chat_template)

    def score(batch: list[int]) -> list[ItemResult]:
        completions = generation.complete(
            model, tokenizer, [prompts[i] for i in batch], not chat_template, max_new_tokens, stop_ids
        )
        results = []
        for i, (completion,) in zip(batch, completions):
            answer = _cut(completion, () if chat_template else PLAIN_STOPS[items[i].task])
            number = extract_final_number(answer)
            results.append(
                ItemResult(
                    items[i].item_id,
                    numbers_match(number, items[i].answer),
                    number or "",
                    {"completion": completion},
                )
            )
        return results

    return _batched(
        items, [len(p) for p in prompts], batch_size, score, on_batch, f"evaluate {_task_of(items)}", shard
    )


def score_code(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence,
    chat_template: bool,
    batch_size: int,
    max_new_tokens: int,
    timeout_s: float,
    n_samples: int = 1,
    temperature: float = 0.0,
    workers: int = 2,
    on_batch: OnBatch | None = None,
    shard: Shard = Shard(),
) -> list[ItemResult]:
    """HumanEval / MBPP completions run against their tests. `correct` is the first sample's outcome (greedy:
    pass@1); with n_samples > 1, detail["samples"] and detail["passed"] feed pass@k."""
    prompts = [prompt_text(tokenizer, format_example(item), chat_template) for item in items]
    stop_ids = stop_token_ids(model, tokenizer, chat_template)

    def score(batch: list[int]) -> list[ItemResult]:
        completions = generation.complete(
            model,
            tokenizer,
            [prompts[i] for i in batch],
            not chat_template,
            max_new_tokens,
            stop_ids,
            temperature,
            n_samples,
        )
        codes, programs = [], []
        for i, samples in zip(batch, completions):
            item = items[i]
            for completion in samples:
                text = _cut(completion, () if chat_template else PLAIN_STOPS[item.task])
                if item.task == "humaneval":
                    code = extract_code(text, item.entry_point)
                    programs.append(humaneval_program(item.question, code, item.test, item.entry_point))
                else:
                    code = extract_code(text)
                    programs.append(mbpp_program(code, item.test_list, item.test_setup_code))
                codes.append(code)
        runs = run_many(programs, max_workers=workers, timeout_s=timeout_s)
        errors = [run.stderr_tail for run in runs if run.status == "error"]
        if errors:
            # An unstarted program is not a wrong answer: stop rather than record it as one.
            raise SemalignError(f"the sandbox could not run {len(errors)} program(s): {errors[0]}")
        results = []
        for k, (i, samples) in enumerate(zip(batch, completions)):
            runs_i = runs[k * n_samples : (k + 1) * n_samples]
            detail = {
                "completion": samples[0],
                "status": runs_i[0].status,
                "stderr_tail": runs_i[0].stderr_tail[-1000:],
            }
            if n_samples > 1:
                detail |= {
                    "samples": n_samples,
                    "passed": sum(run.passed for run in runs_i),
                    "completions": samples,
                    "statuses": [run.status for run in runs_i],
                }
            results.append(ItemResult(items[i].item_id, runs_i[0].passed, codes[k * n_samples], detail))
        return results

    return _batched(
        items, [len(p) for p in prompts], batch_size, score, on_batch, f"evaluate {_task_of(items)}", shard
    )


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    items: Sequence,
    config: EvalConfig,
    results_path: str | Path,
    identity: dict[str, Any] | None = None,
    ranks: Ranks | None = None,
) -> list[ItemResult]:
    """Score the first `config.limit[task]` items, resuming from `results_path`; results in item order.

    identity: what else determines the results (e.g. the weights' hash); with the task and the decoding
    settings it forms the file's header, and a file written under another header is started afresh.
    ranks: under torchrun, this process scores its share of the batches into its own file next to
    `results_path` and returns its results only; rank 0 then calls `merge_results`. Greedy results are
    identical to one process's; sampled ones (temperature > 0) draw from each rank's random stream.
    """
    items = _limited(task, items, config)
    header = results_header(task, config, identity)
    path = Path(results_path)
    shard = ranks.shard if ranks is not None else Shard()
    if shard.world == 1:
        done = _resume(path, header)
        own = path
    else:  # every rank must see the same finished items, so that all form the same batches
        own = _shard_path(path, shard.rank, shard.world)
        _resume(own, header)
        ranks.barrier()
        done = _finished(path, header, shard.world)
        ranks.barrier()
    pending = [item for item in items if item.item_id not in done]
    if pending:

        def append(batch: list[ItemResult]) -> None:
            _append(own, batch)
            done.update((result.item_id, result) for result in batch)

        torch.manual_seed(config.seed)
        if task == "mmlu":
            score_mmlu(model, tokenizer, pending, config.chat_template, config.batch_size, append, shard)
        elif task in MATH_TASKS:
            score_math(
                model,
                tokenizer,
                pending,
                config.chat_template,
                config.batch_size,
                config.new_tokens(task),
                append,
                shard,
            )
        else:
            score_code(
                model,
                tokenizer,
                pending,
                config.chat_template,
                config.batch_size,
                config.new_tokens(task),
                config.timeout_s,
                config.n_samples,
                config.temperature,
                config.workers,
                append,
                shard,
            )
    return [done[item.item_id] for item in items if item.item_id in done]


def merge_results(
    task: str,
    items: Sequence,
    config: EvalConfig,
    results_path: str | Path,
    world: int,
    identity: dict[str, Any] | None = None,
) -> list[ItemResult]:
    """After every rank of `world` has run `evaluate_task`: write all results to `results_path` (header, then
    items in order), remove the ranks' files, and return the results in item order."""
    items = _limited(task, items, config)
    header = results_header(task, config, identity)
    path = Path(results_path)
    done = _finished(path, header, world)
    missing = [item.item_id for item in items if item.item_id not in done]
    if missing:
        raise SemalignError(
            f"{len(missing)} item(s) of {path} were scored by no rank (e.g. {missing[0]}); "
            "rerun the stage: it resumes"
        )
    results = [done[item.item_id] for item in items]
    _write_fresh(path, header, results)
    for rank in range(world):
        _shard_path(path, rank, world).unlink(missing_ok=True)
    return results


def results_header(task: str, config: EvalConfig, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The header of `task`'s results file: the task, the settings its results depend on, and `identity`."""
    # The task's own budget, so that changing another task's budget keeps this task's results valid.
    settings = {
        key: config.new_tokens(task) if key == "max_new_tokens" else getattr(config, key)
        for key in _RESULT_SETTINGS[task]
    }
    return _jsonable({"task": task, "settings": settings, **(identity or {})})


def _limited(task: str, items: Sequence, config: EvalConfig) -> list:
    """The first `config.limit[task]` of `items`, after checking they are `task`'s."""
    if task not in TASKS:
        raise SemalignError(f"unknown task {task!r}; known tasks are {list(TASKS)}")
    wrong = sorted({item.task for item in items} - {task})
    if wrong:
        raise SemalignError(
            f"evaluate_task({task!r}) got items of task(s) {wrong}; pass that task's evaluation split"
        )
    return list(items)[: (config.limit or {}).get(task)]


def _shard_path(path: Path, rank: int, world: int) -> Path:
    """Rank `rank`'s results file of a `world`-process run."""
    return path.with_name(f"{path.name}.rank{rank}-of-{world}")


def _finished(path: Path, header: dict, world: int) -> dict[str, ItemResult]:
    """Results written under `header` to `path` or to any rank's file of a `world`-process run (read only)."""
    done: dict[str, ItemResult] = {}
    for file in [path] + [_shard_path(path, rank, world) for rank in range(world)]:
        found, results, _ = _parse(file)
        if found == header:
            done.update(results)
    return done


def protocol(
    tokenizer: PreTrainedTokenizerBase, task: str, items: Sequence, config: EvalConfig
) -> dict[str, Any]:
    """How `task` was scored, for the metrics file: prompt mode and an example prompt, answer and decoding."""
    described: dict[str, Any] = {
        "chat_template": config.chat_template,
        "example_prompt": prompt_text(tokenizer, format_example(items[0]), config.chat_template)
        if items
        else None,
    }
    if task == "mmlu":
        ids = answer_token_ids(tokenizer, config.chat_template)
        return described | {
            "answer": "argmax next-token log-prob over the letters",
            "answer_tokens": [tokenizer.decode([i]) for i in ids],
            "answer_token_ids": ids,
        }
    stops = [] if config.chat_template else list(PLAIN_STOPS[task])
    decoding = {
        "max_new_tokens": config.new_tokens(task),
        "stop_strings": stops,
        "do_sample": False,
        "repetition_penalty": 1.0,
    }
    if task in MATH_TASKS:
        return described | {"answer": "final number of the completion", "decoding": decoding}
    decoding |= {
        "do_sample": config.temperature > 0,
        "temperature": config.temperature,
        "n_samples": config.n_samples,
        "top_p": 1.0,
        "top_k": 0,
    }
    return described | {
        "answer": "code of the completion run against the tests",
        "decoding": decoding,
        "timeout_s": config.timeout_s,
    }


def stop_token_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chat_template: bool
) -> list[int]:
    """Tokens that end a completion: EOS (tokenizer and model's generation config) and, in chat mode,
    the first token of the template's end of turn."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    if chat_template:
        ids.add(tokenizer(end_of_turn(tokenizer), add_special_tokens=False)["input_ids"][0])
    ids.discard(None)
    if not ids:
        raise SemalignError(
            "the tokenizer has no EOS token, so completions could not stop; set tokenizer.eos_token"
        )
    return sorted(ids)


def read_results(path: str | Path) -> list[ItemResult]:
    """The item results of a results file, in file order (a half-written last line is ignored)."""
    _, results, _ = _parse(Path(path))
    return list(results.values())


def summarise_results(results: Sequence[ItemResult]) -> dict[str, Any]:
    """{n, accuracy, ci_low, ci_high} (95% Wilson; accuracy is pass@1 for code), plus pass@1 and pass@n
    from all samples when the results carry sample counts, and the mean A-D probability mass for MMLU."""
    summary: dict[str, Any] = summarise([result.correct for result in results])
    masses = [result.detail["letter_mass"] for result in results if "letter_mass" in result.detail]
    if masses:
        # MMLU: the mean next-token probability on A-D; far below 1, the model wanted to answer otherwise.
        summary["letter_mass_mean"] = sum(masses) / len(masses)
    sampled = [result.detail for result in results if "samples" in result.detail]
    if sampled and len(sampled) == len(results):
        n = min(detail["samples"] for detail in sampled)
        for k in sorted({1, n}):
            summary[f"pass@{k}"] = sum(pass_at_k(d["samples"], d["passed"], k) for d in sampled) / len(
                sampled
            )
    return summary


def compare_paired(
    base: Sequence[ItemResult], other: Sequence[ItemResult], iters: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """`other` against `base` on the items both have (joined on item_id): exact McNemar (b01: items only
    `other` got right, b10: only `base`) and the paired-bootstrap accuracy difference other - base."""
    base_by_id = {result.item_id: result.correct for result in base}
    pairs = [(base_by_id[result.item_id], result.correct) for result in other if result.item_id in base_by_id]
    if not pairs:
        raise SemalignError(
            "the two result sets share no item_id; compare results of the same task's evaluation split"
        )
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    b01, b10, p = mcnemar(a, b)
    diff, low, high = paired_bootstrap([float(y) for y in b], [float(x) for x in a], iters=iters, seed=seed)
    return {
        "n": len(pairs),
        "b01": b01,
        "b10": b10,
        "mcnemar_p": p,
        "diff": diff,
        "diff_low": low,
        "diff_high": high,
    }


def _batched(
    items: Sequence,
    lengths: Sequence[int],
    batch_size: int,
    score: Callable[[list[int]], list[ItemResult]],
    on_batch: OnBatch | None,
    desc: str,
    shard: Shard = Shard(),
) -> list[ItemResult]:
    """Score items in batches of similar length (longest first, so running out of memory shows at once),
    hand each batch to `on_batch`, and return the results in item order. With several processes the same
    batches are formed everywhere and `shard` scores only its own (round-robin), so each batch, padding
    included, is the one a single process would score: only this shard's results are returned."""
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    batches = shard.take([order[start : start + batch_size] for start in range(0, len(order), batch_size)])
    results: dict[int, ItemResult] = {}
    for batch in progress(batches, desc=desc, unit="batch"):
        scored = score(batch)
        results.update(zip(batch, scored))
        if on_batch is not None:
            on_batch(scored)
    return [results[i] for i in sorted(results)]


def _cut(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops`."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text


def _task_of(items: Sequence) -> str:
    return items[0].task if items else "?"


def _jsonable(value: Any) -> Any:
    # Tuples become lists, as they would after a round trip through the file.
    return json.loads(json.dumps(value))


def _parse(path: Path) -> tuple[dict | None, dict[str, ItemResult], int]:
    """(header, results by item_id, bytes of the well-formed prefix) of a results file."""
    if not path.exists():
        return None, {}, 0
    data = path.read_bytes()
    header, results, good = None, {}, 0
    for line in data.splitlines(keepends=True):
        row = _row(line)
        if row is None or (good > 0 and set(row) != _FIELDS):
            if good + len(line) < len(data):
                raise SemalignError(
                    f"{path} is damaged after byte {good}, before its last line; delete it to rerun"
                )
            break
        if good == 0:
            header = row.get("identity")
        else:
            results[row["item_id"]] = ItemResult(**row)
        good += len(line)
    return header, results, good


def _row(line: bytes) -> dict | None:
    """A complete line's JSON object; None for a half-written or malformed line."""
    try:
        row = json.loads(line) if line.endswith(b"\n") else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


def _resume(path: Path, header: dict) -> dict[str, ItemResult]:
    """The results already in `path` if it was written under `header`; otherwise (or when it does not
    exist) a fresh file holding only the header. A half-written last line is cut off."""
    found, results, good = _parse(path)
    if found != header:
        _write_fresh(path, header)
        return {}
    if good < path.stat().st_size:
        os.truncate(path, good)
    return results


def _lines(results: Sequence[ItemResult]) -> str:
    """One JSON line per result, as results files hold them."""
    return "".join(json.dumps(asdict(result), ensure_ascii=False) + "\n" for result in results)


def _write_fresh(path: Path, header: dict, results: Sequence[ItemResult] = ()) -> None:
    """Replace `path` atomically by a results file of `header` and `results`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"identity": header}) + "\n" + _lines(results), encoding="utf-8")
    os.replace(partial, path)


def _append(path: Path, results: Sequence[ItemResult]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(_lines(results))
        f.flush()
        os.fsync(f.fileno())
