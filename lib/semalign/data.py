"""Splits, prompts and tokenisation of benchmark items, and the on-disk form of a tokenised split.

Splits: a task's items are sorted by `item_id` and permuted with a seeded numpy Generator; evaluation
takes the first slice of the permutation, then attribution, alignment, training and agreement follow in that
order. So the evaluation set depends only on the seed and its own size, and never changes when a later split
grows or shrinks; agreement comes last, so adding it changes no other split. Agreement is the held-out split
of teacher agreement (KL to the teacher's cached next-token distribution): no attribution, alignment or
training step reads it. A task with only an evaluation split (attribution = alignment = training = 0) is
evaluation-only: it is scored, never transferred on. Its empty splits are still written (0 rows), so every
task's folder has the same layout, and `load_split` refuses to hand an empty split to a stage.

Tokenisation: prompt and target are tokenised separately and concatenated, so the answer mask ends
exactly at the target's first token. The target closes with the chat template's end of turn (chat mode)
or the EOS token (plain mode), and that closing text is supervised too: the model must learn to stop.
Rows are right-padded to `max_length`. When prompt + target do not fit, the prompt loses tokens from
its left (the end of the prompt is next to the answer and matters most); when the target alone does not
fit, one prompt token is kept and the target is cut on the right. Both cases are counted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from semalign.config import at_least, build
from semalign.errors import SemalignError
from semalign.files import write_json
from semalign.tasks import LETTERS, TASKS, TaskItem

SPLITS = ("evaluation", "attribution", "alignment", "training", "agreement")
_SENTINEL = "@@semalign-target@@"


@dataclass(frozen=True)
class TaskConfig:
    """One entry of `data.tasks`: the local file (None: the packaged default) and items per split.
    Sizes left out are 0; a task with only `evaluation` is evaluation-only. `agreement` is the held-out split
    on which every variant is compared with the teacher's next-token distribution."""

    path: str | None = None
    evaluation: int = at_least(0, 0)
    attribution: int = at_least(0, 0)
    alignment: int = at_least(0, 0)
    training: int = at_least(0, 0)
    agreement: int = at_least(0, 0)

    @property
    def evaluation_only(self) -> bool:
        """True when no split but evaluation has items: the task is scored, never transferred on."""
        return self.attribution == self.alignment == self.training == self.agreement == 0


@dataclass
class DataConfig:
    """The `data` section: tasks by name, token budget per example, split seed, chat formatting."""

    tasks: dict[str, TaskConfig]
    max_length: int = at_least(512, 2)  # one prompt + one target token
    seed: int = at_least(0, 0)
    chat_template: bool = True

    def __post_init__(self):
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise SemalignError(f"data.tasks has unknown task(s) {unknown}; known tasks are {list(TASKS)}")
        self.tasks = {
            name: cfg if isinstance(cfg, TaskConfig) else build(TaskConfig, cfg, f"data.tasks.{name}")
            for name, cfg in self.tasks.items()
        }


def split_items(items: Sequence[TaskItem], sizes: TaskConfig, seed: int) -> dict[str, list[TaskItem]]:
    """Disjoint splits {evaluation, attribution, alignment, training, agreement} of one task's items."""
    ordered = sorted(items, key=lambda item: item.item_id)
    task = ordered[0].task if ordered else "?"
    if len({item.item_id for item in ordered}) != len(ordered):
        raise SemalignError(
            f"{task}: item ids are not unique; check data.tasks.{task}.path for duplicated rows"
        )
    wanted = {split: getattr(sizes, split) for split in SPLITS}
    if sum(wanted.values()) > len(ordered):
        raise SemalignError(
            f"{task}: the splits ask for {sum(wanted.values())} items {wanted} but only "
            f"{len(ordered)} exist; lower the sizes in data.tasks.{task}"
        )
    order = np.random.default_rng(seed).permutation(len(ordered))
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = [ordered[i] for i in order[start : start + wanted[split]]]
        start += wanted[split]
    return splits


@dataclass(frozen=True)
class Example:
    """A zero-shot prompt and the target the model is trained to write after it.

    In plain text the two are joined by `sep` (" " after "Answer:"); a chat template puts the prompt in
    a user message and the target, without `sep`, in the assistant message.
    """

    prompt: str
    target: str
    sep: str = ""


def format_example(item: TaskItem) -> Example:
    """MMLU in lm-eval-harness style, math as "Question: ...\\nAnswer:", code as a completion."""
    if item.task == "mmlu":
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices))
        return Example(f"{item.question}{options}\nAnswer:", item.answer, " ")
    if item.task in ("gsm8k", "asdiv"):
        # GSM8K trains on the worked solution (it ends in "#### n"); ASDiv has only the number.
        return Example(f"Question: {item.question}\nAnswer:", item.solution or item.answer, " ")
    if item.task == "humaneval":
        return Example(item.question, item.answer)
    if item.task == "mbpp":
        tests = "\n".join(item.test_list)
        return Example(f"{item.question}\nYour code should pass these tests:\n{tests}\n", item.answer)
    raise SemalignError(f"no prompt format for task {item.task!r}; known tasks are {list(TASKS)}")


def prompt_text(tokenizer: PreTrainedTokenizerBase, example: Example, chat_template: bool) -> str:
    """The text the model reads before the target (chat: rendered with the generation prompt)."""
    if not chat_template:
        return example.prompt
    if not tokenizer.chat_template:
        raise SemalignError(
            "data.chat_template is true but the tokenizer has no chat template; set data.chat_template: false"
        )
    messages = [{"role": "user", "content": example.prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The text the chat template puts after an assistant message (Qwen: "<|im_end|>\\n")."""
    head = prompt_text(tokenizer, Example("?", ""), chat_template=True)
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(head + _SENTINEL):
        raise SemalignError(
            "the tokenizer's chat template does not render an assistant reply right after its "
            "generation prompt; set data.chat_template: false"
        )
    return full[len(head) + len(_SENTINEL) :]


@dataclass
class Encoded:
    """Tokenised examples, right-padded to T = max_length.

    input_ids: [N, T] int64. attention_mask: [N, T] int64, 1 on real tokens. answer_mask: [N, T] bool,
    True on target tokens (with the closing EOS / end of turn). labels: [N, T] int64, input_ids where
    answer_mask else -100 (the model shifts them).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    labels: torch.Tensor
    stats: dict[str, int] = field(default_factory=dict)  # examples, tokens, answer_tokens, truncated_*

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "answer_mask": self.answer_mask,
            "labels": self.labels,
        }


def encode(
    items: Sequence[TaskItem], tokenizer: PreTrainedTokenizerBase, max_length: int, chat_template: bool
) -> Encoded:
    """Tokenise `items` (prompt + target, see the module docstring for truncation) into an `Encoded`."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise SemalignError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    examples = [format_example(item) for item in items]
    prompts = [prompt_text(tokenizer, ex, chat_template) for ex in examples]
    if chat_template:
        closing = end_of_turn(tokenizer)
        prompt_ids = _token_ids(tokenizer, prompts, add_special_tokens=False)
        target_ids = _token_ids(tokenizer, [ex.target + closing for ex in examples], add_special_tokens=False)
    else:
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        prompt_ids = _token_ids(tokenizer, prompts, add_special_tokens=True)
        targets = _token_ids(tokenizer, [ex.sep + ex.target for ex in examples], add_special_tokens=False)
        target_ids = [ids + eos for ids in targets]

    n = len(examples)
    input_ids = torch.full((n, max_length), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((n, max_length), dtype=torch.int64)
    answer_mask = torch.zeros((n, max_length), dtype=torch.bool)
    truncated_prompts = truncated_answers = 0
    for row, (prompt, target) in enumerate(zip(prompt_ids, target_ids)):
        room = max_length - len(target)
        if room >= min(1, len(prompt)):
            kept = prompt[max(0, len(prompt) - room) :]
        else:
            kept = prompt[-1:]
            target = target[: max_length - len(kept)]
            truncated_answers += 1
        truncated_prompts += len(kept) < len(prompt)
        ids = kept + target
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        attention_mask[row, : len(ids)] = 1
        answer_mask[row, len(kept) : len(ids)] = True
    labels = torch.where(answer_mask, input_ids, torch.full_like(input_ids, -100))
    stats = {
        "examples": n,
        "tokens": int(attention_mask.sum()),
        "answer_tokens": int(answer_mask.sum()),
        "truncated_prompts": truncated_prompts,
        "truncated_answers": truncated_answers,
    }
    return Encoded(input_ids, attention_mask, answer_mask, labels, stats)


def _token_ids(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], add_special_tokens: bool
) -> list[list[int]]:
    # A fast tokenizer fails on an empty batch, and an empty split is legitimate (a size of 0).
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"] if texts else []


def data_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of `tensors`, for manifests and change checks."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_split(directory: str | Path, name: str, encoded: Encoded, items: Sequence[TaskItem]) -> dict:
    """Write `directory/name/` = tensors.safetensors + items.jsonl + summary.json; returns the summary."""
    if len(items) != encoded.input_ids.shape[0]:
        raise ValueError(
            f"save_split {name}: {len(items)} items but {encoded.input_ids.shape[0]} tensor rows"
        )
    out = Path(directory) / name
    out.mkdir(parents=True, exist_ok=True)
    tensors = encoded.tensors()
    save_file(tensors, str(out / "tensors.safetensors"))
    (out / "items.jsonl").write_text(
        "".join(json.dumps(item.to_dict(), ensure_ascii=False) + "\n" for item in items)
    )
    summary = {
        "name": name,
        "max_length": encoded.input_ids.shape[1],
        "tasks": dict(sorted(Counter(item.task for item in items).items())),
        **encoded.stats,
        "fingerprint": data_fingerprint(tensors),
    }
    write_json(out / "summary.json", summary)
    return summary


def load_split(directory: str | Path, name: str) -> tuple[Encoded, list[TaskItem]]:
    """Read back what `save_split` wrote, checking the tensors against the recorded fingerprint.

    directory: a task's folder, data/tasks/<task>; its name is the task's name in the error messages.
    Every reader needs items, so an empty split (size 0, e.g. the training split of an evaluation-only
    task) is refused with the params to change.
    """
    folder = Path(directory) / name
    task = Path(directory).name
    if not (folder / "summary.json").is_file():
        raise SemalignError(
            f"split {name!r} is missing from {Path(directory)}; list {task} under data.tasks "
            "and run `dvc repro` to write it"
        )
    summary = json.loads((folder / "summary.json").read_text())
    if summary["examples"] == 0:
        fix = (
            f"set it > 0 to evaluate {task}"
            if name == "evaluation"
            else f"a transfer stage needs it: set it > 0, or remove {task} from transfer.tasks (evaluation "
            f"only)"
        )
        raise SemalignError(f"split {name!r} of {task} is empty: data.tasks.{task}.{name} is 0; {fix}")
    tensors = load_file(str(folder / "tensors.safetensors"))
    if data_fingerprint(tensors) != summary["fingerprint"]:
        raise SemalignError(
            f"split {name!r} in {Path(directory)} changed after it was written; rerun `dvc repro`"
        )
    lines = (folder / "items.jsonl").read_text().splitlines()
    items = [TaskItem.from_dict(json.loads(line)) for line in lines]
    stats = {
        key: summary[key]
        for key in ("examples", "tokens", "answer_tokens", "truncated_prompts", "truncated_answers")
    }
    return Encoded(**tensors, stats=stats), items
