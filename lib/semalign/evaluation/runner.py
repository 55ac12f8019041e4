"""Scoring a model on a task's evaluation items (paper §5.1), resumably; the results file, its summaries and
paired comparisons live in semalign.evaluation.results.

Every task is scored zero-shot under a named protocol (`semalign.evaluation.prompts`: `lm_eval`, plain
text as in lm-evaluation-harness, or `chat`), whatever format training used:
- MMLU: the next-token log-probs of the four answer letters right after the prompt; the highest wins.
  The letter is " A" after "Answer:" (lm_eval) or "A" at the start of the assistant reply (chat).
- GSM8K / ASDiv: a greedy completion, read strictly ("#### n" / "the answer is n") and flexibly (its last
  number); `correct` is the flexible reading. A completion cut by max_new_tokens is truncated and wrong.
- HumanEval / MBPP: greedy (or sampled) completions; the code in them runs against the task's tests in
  the sandbox. HumanEval programs are the raw task prompt + the extracted code, as in the official harness.
Plain-text prompts have no end of turn to stop at, so completions are also cut at the usual stop strings.

Results file: each batch's lines are appended and fsync'ed as it finishes. A rerun keeps the items already
there and computes only the others; a half-written last line (a killed run) is dropped; a header that
differs from this run's (another model or other decoding settings) means the old results are discarded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from semalign.config import at_least, positive
from semalign.data import end_of_turn
from semalign.distributed import Ranks, Shard
from semalign.errors import SemalignError
from semalign.evaluation import generation
from semalign.evaluation.answers import (
    extract_code,
    extract_last_number,
    extract_strict_number,
    mmlu_choice,
    numbers_match,
)
from semalign.evaluation.prompts import check_protocol, eval_prompt, letter_continuations
from semalign.evaluation.results import (
    ItemResult,
    append_results,
    parse_results,
    resume_results,
    write_results,
)
from semalign.evaluation.sandbox import humaneval_program, mbpp_program, run_many
from semalign.models import check_precision
from semalign.progress import progress
from semalign.tasks import LETTERS, TASKS

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
# The settings an item's result depends on besides its protocol, per task; the others (batch_size, limit,
# workers) decide only which items are scored or how fast, so changing them keeps a results file valid.
_RESULT_SETTINGS = {
    "mmlu": (),
    **dict.fromkeys(MATH_TASKS, ("max_new_tokens",)),
    **dict.fromkeys(CODE_TASKS, ("max_new_tokens", "timeout_s", "n_samples", "temperature", "seed")),
}


@dataclass(frozen=True)
class EvalConfig:
    """The `evaluate` section.

    batch_size: prompts per forward pass or generate call. max_new_tokens: completion budget (math, code), one
    number or one per task ({"asdiv": 256, "humaneval": 384}: a math answer is shorter than a program).
    timeout_s: wall-clock limit per program in the sandbox. n_samples, temperature: completions per code
    problem and their sampling temperature (1 and 0: greedy pass@1; n > 1 needs temperature > 0 and adds
    pass@k); math is always greedy. limit: items per task, the first ones of the evaluation split ({"mmlu":
    300}; a missing task
    or None: all). protocol: the prompt protocols scored (`tasks.PROTOCOLS`), one name or a list for every
    task, or per task ({"mmlu": ["lm_eval", "chat"], "asdiv": "chat"}); the first of a task's list is its
    headline. workers: sandbox processes in parallel. seed: of torch's RNG for sampling. dtype: the
    precision the scored models run in, float32 or bfloat16 (AMX/tensor-core matmuls; what it changes is
    measured in docs/measurements.md).
    """

    batch_size: int = positive(8)
    max_new_tokens: int | dict[str, int] = positive(512)
    timeout_s: float = positive(3.0)
    n_samples: int = positive(1)
    temperature: float = at_least(0.0, 0)
    limit: dict[str, int | None] | None = positive(None)
    protocol: str | list[str] | dict[str, str | list[str]] = "lm_eval"
    workers: int = positive(2)
    seed: int = at_least(0, 0)
    dtype: str = "float32"

    def __post_init__(self):
        check_precision("evaluate.dtype", self.dtype)
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
        by_task = self.protocol if isinstance(self.protocol, dict) else {None: self.protocol}
        for task, names in by_task.items():
            where = "evaluate.protocol" + (f".{task}" if task else "")
            if task is not None and task not in TASKS:
                raise SemalignError(
                    f"evaluate.protocol has unknown task {task!r}; known tasks are {list(TASKS)}"
                )
            listed = names if isinstance(names, list) else [names]
            if not listed or len(set(listed)) != len(listed):
                raise SemalignError(f"{where} is {names!r}; name each protocol once, e.g. [lm_eval, chat]")
            for name in listed:
                check_protocol(name, where)

    def protocols(self, task: str) -> list[str]:
        """The protocols `task` is scored under, headline first."""
        if isinstance(self.protocol, dict) and task not in self.protocol:
            raise SemalignError(
                f"evaluate.protocol has no entry for {task}; add {task}: lm_eval (or chat) to it "
                "or give one protocol for every task"
            )
        names = self.protocol[task] if isinstance(self.protocol, dict) else self.protocol
        return names if isinstance(names, list) else [names]

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


OnBatch = Callable[[list[ItemResult]], None]


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, protocol: str) -> list[int]:
    """Token ids of the MMLU answers A-D as scored continuations: " A".. (lm_eval), "A".. (chat)."""
    ids = []
    for continuation in letter_continuations(protocol):
        tokens = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise SemalignError(
                f"MMLU answer {continuation!r} is {len(tokens)} tokens {tokens} under this tokenizer; "
                "next-token scoring needs one token per letter: use a tokenizer that has it "
                "or another evaluate.protocol for mmlu"
            )
        ids.append(tokens[0])
    return ids


def score_mmlu(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence,
    protocol: str,
    batch_size: int,
    on_batch: OnBatch | None = None,
    shard: Shard = Shard(),
) -> list[ItemResult]:
    """Zero-shot MMLU: the letter with the highest next-token log-prob after the prompt."""
    letter_ids = answer_token_ids(tokenizer, protocol)
    pad_id = generation.pad_id_of(tokenizer)
    prompts = [eval_prompt(tokenizer, item, protocol) for item in items]
    # No special tokens: lm-eval's HFLM adds none, and a chat prompt already holds the template's own.
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []

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
                    {
                        "logprobs": dict(zip(LETTERS, letter_logprobs)),
                        "letter_mass": mass,
                        "gold": items[i].answer,
                    },
                )
            )
        return results

    return _batched(items, [len(row) for row in rows], batch_size, score, on_batch, "evaluate mmlu", shard)


def plain_stops(items: Sequence, protocol: str) -> tuple[str, ...]:
    """The stop strings completions of `items` are cut at: PLAIN_STOPS of their task under lm_eval (plain
    text has no end of turn), none under chat (the template's end-of-turn token stops it)."""
    return PLAIN_STOPS[_task_of(items)] if protocol == "lm_eval" and items else ()


def score_math(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence,
    protocol: str,
    batch_size: int,
    max_new_tokens: int,
    on_batch: OnBatch | None = None,
    shard: Shard = Shard(),
) -> list[ItemResult]:
    """Greedy worked answers, right when their last number (flexible; detail["strict"]: the marked "#### n"
    or "the answer is n") equals the gold answer. A completion cut by max_new_tokens before it stopped is
    flagged truncated and wrong under both readings: its last number is not its answer."""
    prompts = [eval_prompt(tokenizer, item, protocol) for item in items]
    stop_ids = stop_token_ids(model, tokenizer, protocol == "chat")
    stops = plain_stops(items, protocol)

    def score(batch: list[int]) -> list[ItemResult]:
        completions = generation.complete(
            model, tokenizer, [prompts[i] for i in batch], max_new_tokens, stop_ids, stop_strings=stops
        )
        results = []
        for i, (completion,) in zip(batch, completions):
            answer = _cut(completion.text, stops)
            truncated = not completion.stopped and answer == completion.text
            flexible, strict = extract_last_number(answer), extract_strict_number(answer)
            gold = items[i].answer
            results.append(
                ItemResult(
                    items[i].item_id,
                    not truncated and numbers_match(flexible, gold),
                    flexible or "",
                    {
                        "completion": completion.text,
                        "truncated": truncated,
                        "strict": strict,
                        "strict_correct": not truncated and numbers_match(strict, gold),
                    },
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
    protocol: str,
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
    prompts = [eval_prompt(tokenizer, item, protocol) for item in items]
    stop_ids = stop_token_ids(model, tokenizer, protocol == "chat")
    stops = plain_stops(items, protocol)

    def score(batch: list[int]) -> list[ItemResult]:
        completions = generation.complete(
            model,
            tokenizer,
            [prompts[i] for i in batch],
            max_new_tokens,
            stop_ids,
            temperature,
            n_samples,
            stop_strings=stops,
        )
        codes, programs = [], []
        for i, samples in zip(batch, completions):
            item = items[i]
            for completion in samples:
                text = _cut(completion.text, stops)
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
                "completion": samples[0].text,
                "status": runs_i[0].status,
                "stderr_tail": runs_i[0].stderr_tail[-1000:],
            }
            if n_samples > 1:
                detail |= {
                    "samples": n_samples,
                    "passed": sum(run.passed for run in runs_i),
                    "completions": [sample.text for sample in samples],
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
    protocol: str,
    results_path: str | Path,
    identity: dict[str, Any] | None = None,
    ranks: Ranks | None = None,
) -> list[ItemResult]:
    """Score the first `config.limit[task]` items under `protocol`, resuming from `results_path`; results in
    item order.

    identity: what else determines the results (e.g. the weights' hash); with the task, the protocol and the
    decoding settings it forms the file's header, and a file written under another header is started afresh.
    ranks: under torchrun, this process scores its share of the batches into its own file next to
    `results_path` and returns its results only; rank 0 then calls `merge_results`. Greedy results are
    identical to one process's; sampled ones (temperature > 0) draw from each rank's random stream.
    """
    items = _limited(task, items, config)
    header = results_header(task, config, protocol, identity)
    path = Path(results_path)
    shard = ranks.shard if ranks is not None else Shard()
    if shard.world == 1:
        done = resume_results(path, header)
        own = path
    else:  # every rank must see the same finished items, so that all form the same batches
        own = _shard_path(path, shard.rank, shard.world)
        resume_results(own, header)
        ranks.barrier()
        done = _finished(path, header, shard.world)
        ranks.barrier()
    pending = [item for item in items if item.item_id not in done]
    if pending:

        def append(batch: list[ItemResult]) -> None:
            append_results(own, batch)
            done.update((result.item_id, result) for result in batch)

        torch.manual_seed(config.seed)
        if task == "mmlu":
            score_mmlu(model, tokenizer, pending, protocol, config.batch_size, append, shard)
        elif task in MATH_TASKS:
            score_math(
                model,
                tokenizer,
                pending,
                protocol,
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
                protocol,
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
    protocol: str,
    results_path: str | Path,
    world: int,
    identity: dict[str, Any] | None = None,
) -> list[ItemResult]:
    """After every rank of `world` has run `evaluate_task`: write all results to `results_path` (header, then
    items in order), remove the ranks' files, and return the results in item order."""
    items = _limited(task, items, config)
    header = results_header(task, config, protocol, identity)
    path = Path(results_path)
    done = _finished(path, header, world)
    missing = [item.item_id for item in items if item.item_id not in done]
    if missing:
        raise SemalignError(
            f"{len(missing)} item(s) of {path} were scored by no rank (e.g. {missing[0]}); "
            "rerun the stage: it resumes"
        )
    results = [done[item.item_id] for item in items]
    write_results(path, header, results)
    for rank in range(world):
        _shard_path(path, rank, world).unlink(missing_ok=True)
    return results


def results_header(
    task: str, config: EvalConfig, protocol: str, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The header of `task`'s results file under `protocol`: the task, the settings its results depend on,
    and `identity`."""
    check_protocol(protocol, f"the protocol of {task}")
    # The task's own budget, so that changing another task's budget keeps this task's results valid.
    settings = {"protocol": protocol} | {
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
        found, results, _ = parse_results(file)
        if found == header:
            done.update(results)
    return done


def describe_protocol(
    tokenizer: PreTrainedTokenizerBase, task: str, items: Sequence, config: EvalConfig, protocol: str
) -> dict[str, Any]:
    """How `task` was scored under `protocol`, for the metrics file: example prompt, answer and decoding."""
    described: dict[str, Any] = {
        "name": protocol,
        "example_prompt": eval_prompt(tokenizer, items[0], protocol) if items else None,
    }
    if task == "mmlu":
        ids = answer_token_ids(tokenizer, protocol)
        return described | {
            "answer": "argmax next-token log-prob over the letters",
            "answer_tokens": [tokenizer.decode([i]) for i in ids],
            "answer_token_ids": ids,
        }
    stops = list(PLAIN_STOPS[task]) if protocol == "lm_eval" else []
    decoding = {
        "max_new_tokens": config.new_tokens(task),
        "stop_strings": stops,
        "do_sample": False,
        "repetition_penalty": 1.0,
    }
    if task in MATH_TASKS:
        return described | {
            "answer": "last number of the completion (strict: after '####' or 'the answer is'); "
            "a completion cut by max_new_tokens is wrong",
            "decoding": decoding,
        }
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
