"""Evaluation runner: MMLU letter scoring (left padding, answer tokens), math and code scoring through
answer extraction and the real sandbox, resumable results files, and the results table."""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model

from semalign.data import encode, save_split
from semalign.errors import SemalignError
from semalign.evaluation import generation, runner
from semalign.evaluation.generation import Completion
from semalign.evaluation.prompts import MMLU_DESCRIPTION, MMLU_INSTRUCTION, eval_prompt
from semalign.evaluation.results import (
    read_results,
    summarise_results,
)
from semalign.evaluation.runner import (
    EvalConfig,
    _cut,
    answer_token_ids,
    evaluate_task,
    score_code,
    score_math,
    score_mmlu,
    stop_token_ids,
)
from semalign.evaluation.sandbox import ExecutionResult
from semalign.evaluation.table import build_table, build_tables, render_markdown
from semalign.evaluation.variants import for_inference, load_variant
from semalign.tasks import LETTERS, TaskItem, load_task
from semalign.testing import tiny_model, tiny_tokenizer
from tiny_project import ROOT, stage_args

FIXTURES = Path(__file__).parents[1] / "fixtures"
VOCAB = 360  # the smallest tiny vocabulary in which " A" .. " D" are single tokens


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2", vocab_size=VOCAB)


def _mmlu_items(n):
    questions = [
        "What is 12 plus 30?",
        "Which one is a prime number among the following four options given?",
        "2?",
        "Name the language model that predicts the next token from the previous ones in a text.",
    ]
    return [
        TaskItem(
            "mmlu",
            f"mmlu/{i:05d}",
            questions[i % 4] + " x" * i,
            LETTERS[i % 4],
            choices=("12", "thirty", "42", "a b c d e"),
        )
        for i in range(n)
    ]


def _math_items(n):
    return [
        TaskItem("asdiv", f"asdiv/{i:05d}", f"Alice has {i} apples and buys 4 more. How many?", str(i + 4))
        for i in range(n)
    ]


class FakeComplete:
    """Stands in for generation.complete: answers from `answer(prompt, k)` (a text that stopped, or a
    Completion), counting the prompts it saw."""

    def __init__(self, answer, fail_after_calls=None):
        self.answer, self.prompts, self.calls, self.fail_after_calls = answer, [], 0, fail_after_calls
        self.stop_strings = set()

    def __call__(
        self,
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        stop_ids,
        temperature=0.0,
        n_samples=1,
        stop_strings=(),
    ):
        self.stop_strings.add(tuple(stop_strings))
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt  # the process dies here
        self.calls += 1
        self.prompts += list(prompts)
        return [[_completion(self.answer(prompt, k)) for k in range(n_samples)] for prompt in prompts]


def _completion(answer):
    return answer if isinstance(answer, Completion) else Completion(answer, stopped=True)


def _asdiv_answer(prompt, _):
    i = int(prompt.split("Alice has ")[1].split()[0])
    return f"{i} + 4 = {i + 4}. The answer is {i + 4 if i % 2 == 0 else i + 5}."


# MMLU


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("protocol", ["lm_eval", "chat"])
def test_left_padded_batches_score_as_single_unpadded_prompts_in_float64(tokenizer, arch, protocol):
    model = tiny_model(arch, vocab_size=VOCAB)
    items = _mmlu_items(6)
    batched = score_mmlu(model, tokenizer, items, protocol, batch_size=4)
    reference = model.double()
    letter_ids = answer_token_ids(tokenizer, protocol)
    for item, result in zip(items, batched):
        prompt = eval_prompt(tokenizer, item, protocol)
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            expected = torch.log_softmax(reference(input_ids=ids).logits[0, -1], -1)[letter_ids]
        got = torch.tensor([result.detail["logprobs"][letter] for letter in LETTERS], dtype=torch.float64)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert result.prediction == LETTERS[int(expected.argmax())]
        assert result.correct == (result.prediction == item.answer)
        assert result.detail["letter_mass"] == pytest.approx(float(expected.exp().sum()), abs=1e-5)
    lengths = {len(tokenizer(eval_prompt(tokenizer, item, protocol))["input_ids"]) for item in items}
    assert len(lengths) > 2  # the batches really were padded


@pytest.mark.parametrize("protocol, chat", [("lm_eval", False), ("chat", True)])
def test_answer_token_is_the_first_supervised_token_of_the_training_target(tokenizer, protocol, chat):
    items = _mmlu_items(4)
    encoded = encode(items, tokenizer, max_length=128, chat_template=chat)
    letter_ids = answer_token_ids(tokenizer, protocol)
    for row, item in enumerate(items):
        first_target = encoded.input_ids[row][encoded.answer_mask[row]][0]
        assert int(first_target) == letter_ids[LETTERS.index(item.answer)]
    spelled = [tokenizer.decode([i]) for i in letter_ids]
    assert spelled == ([*LETTERS] if chat else [" " + letter for letter in LETTERS])


def test_multi_token_answer_letters_are_refused():
    with pytest.raises(SemalignError, match="' B' is 2 tokens"):
        answer_token_ids(tiny_tokenizer(320), "lm_eval")


# Generation


def test_greedy_completion_is_argmax_decoding_whatever_the_checkpoint_generation_config(tokenizer):
    model = tiny_model("qwen2", vocab_size=VOCAB)
    model.generation_config.do_sample, model.generation_config.temperature = True, 0.3
    model.generation_config.repetition_penalty, model.generation_config.top_k = 5.0, 3
    prompts = ["Question: What is 12 plus 30?\nAnswer:", "def add(a, b):\n"]
    got = generation.complete(model, tokenizer, prompts, max_new_tokens=10, stop_ids=[2])
    for prompt, (completion,) in zip(prompts, got):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        new, stopped = [], False
        for _ in range(10):
            with torch.no_grad():
                token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == 2:
                stopped = True
                break
            new.append(token)
        assert completion == Completion(tokenizer.decode(new, skip_special_tokens=True), stopped)


def test_stop_strings_end_decoding_early_and_change_no_kept_text(tokenizer):
    """A row that reaches a stop string stops decoding; cut at that string, every completion equals the
    one decoded to the full budget, and a row that never meets one is unchanged."""
    model = tiny_model("qwen2", vocab_size=VOCAB)
    prompts = ["Question: What is 12 plus 30?\nAnswer:", "def add(a, b):\n", "2?"]
    full = generation.complete(model, tokenizer, prompts, max_new_tokens=24, stop_ids=[2])
    texts = [completion.text for (completion,) in full]
    # Stop strings drawn from what the model does write, so some rows end early and some do not.
    stops = sorted({text[3:5] for text in texts[:2] if len(text) >= 5})
    assert stops, texts
    early = generation.complete(
        model, tokenizer, prompts, max_new_tokens=24, stop_ids=[2], stop_strings=stops
    )
    for (completion,), text in zip(early, texts):
        assert _cut(completion.text, stops) == _cut(text, stops)
        assert len(completion.text) <= len(text)
    assert any(len(c.text) < len(t) for (c,), t in zip(early, texts))


def test_stop_tokens_include_the_chat_end_of_turn(tokenizer, model):
    assert stop_token_ids(model, tokenizer, chat_template=False) == [2]
    assert stop_token_ids(model, tokenizer, chat_template=True) == [
        2,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]


# Math and code


def test_math_scoring_extracts_the_final_number_and_cuts_plain_text_at_the_next_question(monkeypatch):
    answers = {
        0: "0 + 4 = 4 apples\n#### 4",
        1: "The answer is 6.",
        2: "6\nQuestion: what is 2 + 7?\nAnswer: 9",
        3: "no idea",
    }
    monkeypatch.setattr(
        generation,
        "complete",
        FakeComplete(lambda prompt, _: answers[int(prompt.split("Alice has ")[1].split()[0])]),
    )
    items = _math_items(4)
    fake = generation.complete
    plain = score_math(None, tiny_tokenizer(), items, "lm_eval", batch_size=3, max_new_tokens=8)
    assert fake.stop_strings == {("\nQuestion:",)}  # decoding stops where the answer is cut
    assert [(r.correct, r.prediction) for r in plain] == [(True, "4"), (False, "6"), (True, "6"), (False, "")]
    assert [(r.detail["strict_correct"], r.detail["strict"]) for r in plain] == [
        (True, "4"),
        (False, "6"),
        (False, None),  # right by its last number, unmarked: wrong when read strictly
        (False, None),
    ]
    assert plain[2].detail["completion"] == answers[2] and not any(r.detail["truncated"] for r in plain)
    chat = score_math(None, tiny_tokenizer(), items, "chat", batch_size=3, max_new_tokens=8)
    assert [(r.correct, r.prediction) for r in chat] == [(True, "4"), (False, "6"), (False, "9"), (False, "")]


def test_a_math_completion_cut_by_the_token_budget_is_truncated_and_wrong(monkeypatch):
    answers = {
        0: Completion("0 + 4 = 4 apples and then 4", stopped=False),  # right number, but cut off
        1: Completion("1 + 4 = 5\nQuestion: next", stopped=False),  # ended by the plain stop string
        2: Completion("#### 6", stopped=True),
        3: Completion("The answer is 7", stopped=False),  # marked and right, but cut off
    }
    monkeypatch.setattr(
        generation,
        "complete",
        FakeComplete(lambda prompt, _: answers[int(prompt.split("Alice has ")[1].split()[0])]),
    )
    results = score_math(None, tiny_tokenizer(), _math_items(4), "lm_eval", batch_size=4, max_new_tokens=8)
    assert [r.detail["truncated"] for r in results] == [True, False, False, True]
    assert [r.correct for r in results] == [False, True, True, False]
    assert [r.detail["strict_correct"] for r in results] == [False, False, True, False]
    summary = summarise_results(results)
    assert summary["accuracy"] == 0.5 and summary["strict_accuracy"] == 0.25
    assert summary["truncated_share"] == 0.5
    assert summary["strict_ci_low"] < 0.25 < summary["strict_ci_high"]
    chat = score_math(None, tiny_tokenizer(), _math_items(4), "chat", batch_size=4, max_new_tokens=8)
    assert [r.detail["truncated"] for r in chat] == [True, True, False, True]  # no stop strings in chat


def test_code_scoring_runs_completions_in_the_sandbox(monkeypatch):
    problem = load_task("humaneval", str(FIXTURES / "humaneval.jsonl")).items[2]
    mbpp = load_task("mbpp", str(FIXTURES / "mbpp.jsonl")).items[1]
    assert problem.entry_point == "truncate_number" and mbpp.test_list[0].startswith("assert sort_matrix")
    wrong = TaskItem(
        **{
            **problem.to_dict(),
            "item_id": "humaneval/wrong",
            "question": "# wrong\n" + problem.question,
            "choices": (),
            "test_list": (),
        }
    )
    completions = {
        problem.item_id: "Here:\n```python\ndef truncate_number(number: float) -> float:\n    return number "
        "% 1.0\n```",
        wrong.item_id: "```python\ndef truncate_number(number: float) -> float:\n    return number\n```",
        mbpp.item_id: "```python\ndef sort_matrix(M):\n    return sorted(M, key=sum)\n```\nDone.",
    }
    by_prompt = {}
    fake = FakeComplete(lambda prompt, _: by_prompt[prompt])
    monkeypatch.setattr(generation, "complete", fake)
    tokenizer = tiny_tokenizer()
    for item in (problem, wrong, mbpp):
        by_prompt[eval_prompt(tokenizer, item, "chat")] = completions[item.item_id]
    results = score_code(
        None, tokenizer, [problem, wrong, mbpp], "chat", batch_size=2, max_new_tokens=64, timeout_s=5
    )
    assert [r.correct for r in results] == [True, False, True]
    assert [r.detail["status"] for r in results] == ["passed", "failed", "passed"]
    assert "AssertionError" in results[1].detail["stderr_tail"]
    assert results[0].prediction.startswith("\ndef truncate_number")


def test_plain_humaneval_completion_is_cut_before_the_next_top_level_def(monkeypatch):
    problem = load_task("humaneval", str(FIXTURES / "humaneval.jsonl")).items[2]
    # Without the cut the second definition would replace the right one.
    completion = "    return number % 1.0\n\ndef truncate_number(number):\n    return 0\n"
    monkeypatch.setattr(generation, "complete", FakeComplete(lambda prompt, _: completion))
    (result,) = score_code(
        None, tiny_tokenizer(), [problem], "lm_eval", batch_size=1, max_new_tokens=64, timeout_s=5
    )
    assert result.correct and result.prediction == "    return number % 1.0\n"


def test_sampled_code_reports_pass_at_k(monkeypatch):
    problem = load_task("humaneval", str(FIXTURES / "humaneval.jsonl")).items[2]
    samples = ["    return number\n", "    return number % 1.0\n", "    return number\n"]
    monkeypatch.setattr(generation, "complete", FakeComplete(lambda prompt, k: samples[k]))
    results = score_code(
        None,
        tiny_tokenizer(),
        [problem],
        "lm_eval",
        batch_size=1,
        max_new_tokens=64,
        timeout_s=5,
        n_samples=3,
        temperature=0.8,
    )
    assert results[0].detail["passed"] == 1 and results[0].correct is False
    summary = summarise_results(results)
    assert summary["pass@1"] == pytest.approx(1 / 3) and summary["pass@3"] == pytest.approx(1.0)


def test_a_program_the_sandbox_cannot_start_is_not_scored_as_wrong(monkeypatch):
    problem = load_task("humaneval", str(FIXTURES / "humaneval.jsonl")).items[2]
    monkeypatch.setattr(generation, "complete", FakeComplete(lambda prompt, _: "    return 0\n"))
    monkeypatch.setattr(
        runner,
        "run_many",
        lambda sources, **_: [
            ExecutionResult(False, "error", None, "", "sandbox cannot create namespaces", 0.0)
            for _ in sources
        ],
    )
    with pytest.raises(SemalignError, match="cannot create namespaces"):
        score_code(None, tiny_tokenizer(), [problem], "lm_eval", batch_size=1, max_new_tokens=8, timeout_s=5)


# Resume


def test_a_killed_run_resumes_computing_only_the_missing_items(monkeypatch, tmp_path):
    items, config = _math_items(7), EvalConfig(batch_size=2)
    fresh_fake = FakeComplete(_asdiv_answer)
    monkeypatch.setattr(generation, "complete", fresh_fake)
    fresh = evaluate_task(None, tiny_tokenizer(), "asdiv", items, config, "lm_eval", tmp_path / "fresh.jsonl")
    assert len(fresh_fake.prompts) == 7 and [r.correct for r in fresh] == [i % 2 == 0 for i in range(7)]

    path = tmp_path / "killed.jsonl"
    monkeypatch.setattr(generation, "complete", FakeComplete(_asdiv_answer, fail_after_calls=2))
    with pytest.raises(KeyboardInterrupt):
        evaluate_task(None, tiny_tokenizer(), "asdiv", items, config, "lm_eval", path)
    assert len(read_results(path)) == 4
    with open(path, "a") as f:
        f.write('{"item_id": "asdiv/00006", "correct": tr')  # killed in the middle of a write
    resumed_fake = FakeComplete(_asdiv_answer)
    monkeypatch.setattr(generation, "complete", resumed_fake)
    resumed = evaluate_task(None, tiny_tokenizer(), "asdiv", items, config, "lm_eval", path)
    assert len(resumed_fake.prompts) == 3
    assert resumed == fresh
    assert sorted(r.item_id for r in read_results(path)) == [item.item_id for item in items]

    again = FakeComplete(_asdiv_answer)
    monkeypatch.setattr(generation, "complete", again)
    assert (
        evaluate_task(None, tiny_tokenizer(), "asdiv", items, config, "lm_eval", path) == fresh
        and again.calls == 0
    )
    faster = EvalConfig(batch_size=5, workers=1, timeout_s=1.0)  # no math result changes
    assert (
        evaluate_task(None, tiny_tokenizer(), "asdiv", items, faster, "lm_eval", path) == fresh
        and again.calls == 0
    )
    # Other decoding settings or another model: the old results do not count.
    evaluate_task(
        None,
        tiny_tokenizer(),
        "asdiv",
        items,
        EvalConfig(batch_size=2, max_new_tokens=99),
        "lm_eval",
        path,
    )
    evaluate_task(
        None, tiny_tokenizer(), "asdiv", items, config, "lm_eval", path, identity={"weights_sha256": "other"}
    )
    assert len(again.prompts) == 14


def test_mmlu_resume_counts_model_rows_and_matches_a_fresh_run(tokenizer, model, tmp_path):
    items, config = _mmlu_items(5), EvalConfig(batch_size=2, protocol="chat")
    rows = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        fresh = evaluate_task(model, tokenizer, "mmlu", items, config, "chat", tmp_path / "fresh.jsonl")
        lines = (tmp_path / "fresh.jsonl").read_text().splitlines(keepends=True)
        kept = [json.loads(line)["item_id"] for line in lines[1:3]]
        (tmp_path / "partial.jsonl").write_text("".join(lines[:3]) + lines[3][:20])
        rows.clear()
        resumed = evaluate_task(model, tokenizer, "mmlu", items, config, "chat", tmp_path / "partial.jsonl")
    finally:
        hook.remove()
    assert sum(rows) == 3
    assert [(r.item_id, r.correct, r.prediction) for r in resumed] == [
        (r.item_id, r.correct, r.prediction) for r in fresh
    ]
    for a, b in zip(resumed, fresh):
        assert a.detail["logprobs"] == pytest.approx(b.detail["logprobs"], abs=1e-5)
        if a.item_id in kept:
            assert a == b  # read back, not recomputed


def test_limit_takes_the_first_items_and_damage_before_the_last_line_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(generation, "complete", FakeComplete(_asdiv_answer))
    config = EvalConfig(batch_size=4, limit={"asdiv": 3})
    path = tmp_path / "r.jsonl"
    results = evaluate_task(None, tiny_tokenizer(), "asdiv", _math_items(6), config, "lm_eval", path)
    assert [r.item_id for r in results] == ["asdiv/00000", "asdiv/00001", "asdiv/00002"]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    with pytest.raises(SemalignError, match="damaged"):
        evaluate_task(None, tiny_tokenizer(), "asdiv", _math_items(6), config, "lm_eval", path)
    with pytest.raises(SemalignError, match="got items of task"):
        evaluate_task(None, tiny_tokenizer(), "mmlu", _math_items(2), config, "lm_eval", tmp_path / "x.jsonl")


def test_config_rejects_greedy_samples_and_unknown_tasks():
    with pytest.raises(SemalignError, match="temperature"):
        EvalConfig(n_samples=5)
    with pytest.raises(SemalignError, match="unknown task 'gsm'"):
        EvalConfig(limit={"gsm": 10})
    with pytest.raises(SemalignError, match="batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(SemalignError) as error:
        EvalConfig(dtype="float16")
    assert str(error.value) == "evaluate.dtype is 'float16'; use one of ['float32', 'bfloat16']"


def test_protocols_per_task_or_for_every_task_and_their_errors():
    assert EvalConfig().protocols("mmlu") == ["lm_eval"]
    assert EvalConfig(protocol=["chat", "lm_eval"]).protocols("asdiv") == ["chat", "lm_eval"]
    per_task = EvalConfig(protocol={"mmlu": ["lm_eval", "chat"], "asdiv": "chat"})
    assert per_task.protocols("mmlu") == ["lm_eval", "chat"] and per_task.protocols("asdiv") == ["chat"]
    with pytest.raises(SemalignError, match="evaluate.protocol has no entry for humaneval; add humaneval"):
        per_task.protocols("humaneval")
    with pytest.raises(
        SemalignError, match=r"evaluate.protocol.mmlu is 'harness'; use one of \['lm_eval', 'chat'\]"
    ):
        EvalConfig(protocol={"mmlu": "harness"})
    with pytest.raises(SemalignError, match="evaluate.protocol is .'chat', 'chat'.; name each protocol once"):
        EvalConfig(protocol=["chat", "chat"])
    with pytest.raises(SemalignError, match="evaluate.protocol has unknown task 'mmlu2'"):
        EvalConfig(protocol={"mmlu2": "chat"})


def test_a_results_file_of_another_protocol_is_started_afresh(monkeypatch, tmp_path):
    fake = FakeComplete(_asdiv_answer)
    monkeypatch.setattr(generation, "complete", fake)
    items, path = _math_items(3), tmp_path / "r.jsonl"
    evaluate_task(None, tiny_tokenizer(), "asdiv", items, EvalConfig(), "lm_eval", path)
    evaluate_task(None, tiny_tokenizer(), "asdiv", items, EvalConfig(), "chat", path)
    assert len(fake.prompts) == 6 and fake.prompts[3].startswith("<|im_start|>user\n")
    assert not fake.prompts[0].startswith("<|im_start|>")


def test_per_task_budgets_reach_generation_and_keep_the_other_tasks_results(monkeypatch, tmp_path):
    budgets = []

    def complete(model, tokenizer, prompts, max_new_tokens, stop_ids, *args, **kwargs):
        budgets.append(max_new_tokens)
        return [[_completion(_asdiv_answer(prompt, 0))] for prompt in prompts]

    monkeypatch.setattr(generation, "complete", complete)
    items, path = _math_items(3), tmp_path / "asdiv.jsonl"
    config = EvalConfig(batch_size=4, max_new_tokens={"asdiv": 7, "humaneval": 300})
    assert config.new_tokens("asdiv") == 7 and EvalConfig(max_new_tokens=9).new_tokens("mbpp") == 9
    evaluate_task(None, tiny_tokenizer(), "asdiv", items, config, "lm_eval", path)
    assert budgets == [7]
    assert json.loads(path.read_text().splitlines()[0])["identity"]["settings"]["max_new_tokens"] == 7
    other_code_budget = EvalConfig(batch_size=4, max_new_tokens={"asdiv": 7, "humaneval": 99})
    evaluate_task(None, tiny_tokenizer(), "asdiv", items, other_code_budget, "lm_eval", path)
    assert budgets == [7]  # resumed: HumanEval's budget does not decide ASDiv's results
    same_as_one_number = EvalConfig(batch_size=4, max_new_tokens=7)
    evaluate_task(None, tiny_tokenizer(), "asdiv", items, same_as_one_number, "lm_eval", path)
    assert budgets == [7]
    evaluate_task(
        None,
        tiny_tokenizer(),
        "asdiv",
        items,
        EvalConfig(max_new_tokens={"asdiv": 8}),
        "lm_eval",
        path,
    )
    assert budgets == [7, 8]
    with pytest.raises(SemalignError, match="no entry for mbpp; add mbpp"):
        config.new_tokens("mbpp")
    with pytest.raises(SemalignError, match=r"evaluate.max_new_tokens.humaneval is 0; use an integer >= 1"):
        EvalConfig(max_new_tokens={"humaneval": 0})
    with pytest.raises(SemalignError, match=r"evaluate.max_new_tokens has unknown task 'asdiv2'"):
        EvalConfig(max_new_tokens={"asdiv2": 5})
    with pytest.raises(SemalignError, match=r"evaluate.max_new_tokens is '512'"):
        EvalConfig(max_new_tokens="512")


# Table


def _summary(accuracy, n=100):
    return {
        "n": n,
        "accuracy": accuracy,
        "ci_low": accuracy - 0.1,
        "ci_high": accuracy + 0.1,
        "metric": "accuracy",
    }


def test_table_orders_rows_computes_gap_closed_and_pairs_methods_with_the_student(results_of):
    summaries = {
        "sft": {"mmlu": _summary(0.5), "mbpp": _summary(0.3)},
        "teacher": {"mmlu": _summary(0.8)},
        "student": {"mmlu": _summary(0.4), "mbpp": _summary(0.3)},
        "semalign-v1": {"mmlu": _summary(0.6)},
        "flat": {"mmlu": _summary(0.4)},
    }
    results = {
        "student": {"mmlu": results_of([1, 1, 0, 0, 1, 0])},
        "sft": {"mmlu": results_of([1, 0, 1, 1, 1, 1])},
        "teacher": {"mmlu": results_of([1, 1, 1, 1, 1, 1])},
        "semalign-v1": {"mmlu": results_of([0, 0, 1, 1, 1, 1])},
    }
    summaries["teacher"]["humaneval"] = _summary(0.5)
    table = build_table(summaries, results)
    assert table["variants"] == ["student", "teacher", "flat", "semalign-v1", "sft"]
    assert table["tasks"] == ["mmlu", "humaneval", "mbpp"]
    assert table["gap_closed"]["semalign-v1"] == {"mmlu": pytest.approx(0.5)}
    assert table["gap_closed"]["sft"] == {"mmlu": pytest.approx(0.25)}  # no teacher on mbpp: undefined
    assert table["gap_closed"]["flat"]["mmlu"] == pytest.approx(0.0)
    assert table["paired_vs_student"]["sft"]["mmlu"]["b01"] == 3 and table["paired_vs_student"]["flat"] == {}
    assert (
        table["paired_vs_student"]["teacher"]["mmlu"]["b01"],
        table["paired_vs_student"]["teacher"]["mmlu"]["b10"],
    ) == (3, 0)
    # against sft: every method but sft itself; only sft is right on item 0
    assert set(table["paired_vs_sft"]) == {"flat", "semalign-v1"} and table["paired_vs_sft"]["flat"] == {}
    assert (
        table["paired_vs_sft"]["semalign-v1"]["mmlu"]["b01"],
        table["paired_vs_sft"]["semalign-v1"]["mmlu"]["b10"],
    ) == (0, 1)
    assert table["rows"]["student"]["mmlu"] == {
        "accuracy": 0.4,
        "ci_low": pytest.approx(0.3),
        "ci_high": pytest.approx(0.5),
        "n": 100,
    }
    text = render_markdown(build_tables({"lm_eval": summaries}, {"lm_eval": results}))
    assert text.startswith("# Results, lm_eval protocol (headline)")
    assert "## Paired on items against sft, lm_eval protocol (headline)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| student | 0.400 [0.300, 0.500] (100) | — | 0.300 [0.200, 0.400] (100) |")
    assert [row.split(" | ")[0] for row in rows[1:6]] == [
        "| student",
        "| teacher",
        "| flat",
        "| semalign-v1",
        "| sft",
    ]
    assert "| sft | mmlu | 6 | +0.333" in text and "| 3 / 1 | 0.625 |" in text
    gaps = build_table(
        {"student": {"mmlu": _summary(0.4)}, "teacher": {"mmlu": _summary(0.4)}, "m": {"mmlu": _summary(0.5)}}
    )
    assert gaps["gap_closed"] == {"m": {"mmlu": None}}


def test_an_evaluation_only_task_has_base_rows_and_no_method_cells(results_of):
    summaries = {
        "student": {"mmlu": _summary(0.4), "asdiv": _summary(0.2, n=30), "humaneval": _summary(0.1, n=10)},
        "teacher": {"mmlu": _summary(0.8), "asdiv": _summary(0.5, n=30), "humaneval": _summary(0.3, n=10)},
        "v1": {"mmlu": _summary(0.6)},
    }
    results = {
        "student": {"mmlu": results_of([1, 0]), "asdiv": results_of([1, 0], prefix="a")},
        "v1": {"mmlu": results_of([1, 1])},
    }
    table = build_table(summaries, results)
    assert table["tasks"] == ["mmlu", "asdiv", "humaneval"]
    assert table["gap_closed"] == {"v1": {"mmlu": pytest.approx(0.5)}}
    assert set(table["paired_vs_student"]["v1"]) == {"mmlu"}
    assert table["rows"]["v1"] == {
        "mmlu": {"accuracy": 0.6, "ci_low": pytest.approx(0.5), "ci_high": pytest.approx(0.7), "n": 100}
    }
    lines = render_markdown(build_tables({"chat": summaries}, {"chat": results})).splitlines()
    assert (
        "| teacher | 0.800 [0.700, 0.900] (100) | 0.500 [0.400, 0.600] (30) | 0.300 [0.200, 0.400] (10) |"
        in lines
    )
    assert "| v1 | 0.600 [0.500, 0.700] (100) | — | — |" in lines
    assert "| v1 | 0.50 | — | — |" in lines  # gap closed: only where v1 ran
    assert [line for line in lines if line.startswith("| v1 | ") and "asdiv" in line] == []


# Stages


def _project(root, tokenizer, model):
    """A tiny project: student and teacher folders, an MMLU evaluation split, params.yaml."""
    for role in ("student", "teacher"):
        model.save_pretrained(root / "data/models" / role)
        tokenizer.save_pretrained(root / "data/models" / role)
    items = _mmlu_items(5)
    save_split(root / "data/tasks/mmlu", "evaluation", encode(items, tokenizer, 128, True), items)
    protocol = {"mmlu": ["lm_eval", "chat"]}
    params = {
        "data": {"chat_template": True},
        "evaluate": {"batch_size": 2, "limit": {"mmlu": 4}, "protocol": protocol},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def _run_stage(monkeypatch, script, *args):
    """Run `script` (stages/<name>.py) with `args` in this process, as its dvc.yaml cmd does."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(ROOT / script), run_name="__main__")


@pytest.mark.parametrize(
    ("variant", "adapter", "message"),
    [
        ("v1", None, "variant v1 is a method but got no adapter; pass --adapter data/adapters/<task>/v1"),
        (
            "student",
            "data/adapters/mmlu/v1",
            "variant student is a base model but got adapter data/adapters/mmlu/v1; drop --adapter",
        ),
    ],
)
def test_a_variant_scored_as_something_else_is_refused(tmp_path, variant, adapter, message):
    """A method evaluated without its adapter would be recorded as the bare student, and a base model with
    one as itself: both stop before any model is loaded."""
    with pytest.raises(SemalignError, match=re.escape(message)):
        load_variant(variant, tmp_path / "missing", adapter and Path(adapter), "cpu")


def test_a_loaded_variant_is_frozen_and_feeds_its_head_a_contiguous_input(tokenizer, model, tmp_path):
    """load_variant puts every model through for_inference: a merged LoRA student (frozen by PEFT) and a
    plain one alike, so neither takes the strided-head path."""
    _project(tmp_path, tokenizer, model)
    lora = get_peft_model(
        tiny_model("qwen2", vocab_size=VOCAB), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    lora.save_pretrained(tmp_path / "adapter")
    for variant, adapter in (("student", None), ("v1", tmp_path / "adapter")):
        loaded, _, _ = load_variant(variant, tmp_path / "data/models/student", adapter, "cpu", torch.bfloat16)
        assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
        assert _head_inputs_contiguous(loaded, [[5, 6, 7], [8]]) == [True], variant


def test_evaluate_and_table_stages_end_to_end(tokenizer, model, tmp_path, monkeypatch):
    _project(tmp_path, tokenizer, model)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SemalignError, match="no adapter .* train stage"):
        _run_stage(monkeypatch, *stage_args("evaluate_transfer", task="mmlu", objective="semalign-v1"))
    torch.manual_seed(1)
    lora = get_peft_model(
        tiny_model("qwen2", vocab_size=VOCAB), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    for name, weight in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=2.0)  # a non-zero update, so the merge shows
    lora.save_pretrained(tmp_path / "data/adapters/mmlu/semalign-v1")
    for variant in ("student", "teacher"):
        _run_stage(monkeypatch, *stage_args("evaluate", task="mmlu", variant=variant))
    _run_stage(monkeypatch, *stage_args("evaluate_transfer", task="mmlu", objective="semalign-v1"))
    metrics = json.loads(Path("metrics/eval/mmlu/student.json").read_text())
    # the headline (first) protocol at the top level, every protocol under "protocols"
    assert metrics["n"] == 4 and metrics["protocol"]["answer_tokens"] == [" " + letter for letter in LETTERS]
    assert metrics["accuracy"] == metrics["protocols"]["lm_eval"]["accuracy"]
    lm_eval_prompt = metrics["protocol"]["example_prompt"]
    assert lm_eval_prompt.startswith(MMLU_DESCRIPTION) and lm_eval_prompt.endswith("\nAnswer:")
    assert "<|im_start|>" not in lm_eval_prompt  # whatever data.chat_template says
    chat = metrics["protocols"]["chat"]
    assert chat["protocol"]["answer_tokens"] == list(LETTERS)
    assert chat["protocol"]["example_prompt"].endswith(
        f"{MMLU_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    for summary in (metrics, chat):
        assert 0 < summary["letter_mass_mean"] < 1 and sum(summary["predicted_letters"].values()) == 4
        assert summary["gold_logprob_renorm_mean"] < 0 and summary["constant_baseline"]["accuracy"] >= 0.25
    for protocol in ("lm_eval", "chat"):
        student = read_results(f"data/eval/mmlu/student/{protocol}.jsonl")
        adapted = read_results(f"data/eval/mmlu/semalign-v1/{protocol}.jsonl")
        assert len(adapted) == 4
        assert [r.detail["logprobs"] for r in adapted] != [r.detail["logprobs"] for r in student]

    _run_stage(monkeypatch, *stage_args("table"))
    tables = json.loads(Path("metrics/table.json").read_text())
    assert tables["protocols"] == ["lm_eval", "chat"]
    for table in tables["tables"].values():
        assert table["variants"] == ["student", "teacher", "semalign-v1"]
        assert set(table["paired_vs_student"]) == {"teacher", "semalign-v1"}
        assert table["paired_vs_student"]["semalign-v1"]["mmlu"]["n"] == 4
        assert table["paired_vs_sft"] == {}  # no sft run
        assert "gold_logprob_mdd" in table["paired_vs_student"]["teacher"]["mmlu"]
    markdown = Path("report/table.md").read_text()
    assert markdown.startswith("# Results, lm_eval protocol (headline)")
    assert markdown.index("## mmlu: gold log-prob") < markdown.index("## Results, chat protocol")

    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": {"chat_template": True}}))
    with pytest.raises(SemalignError, match=r"unknown key\(s\) \['chat_template'\]"):
        _run_stage(monkeypatch, *stage_args("evaluate", task="mmlu", variant="student"))


def test_inference_model_feeds_its_head_a_contiguous_input_and_scores_the_same():
    """A frozen model scored with logits_to_keep=1 takes torch's unfolded bmm path on the strided slice
    (the head copied per row: merged LoRA students scored 3-4x slower); `for_inference` hands the head a
    contiguous input, and the next-token log-probs stay those of the full float64 forward."""
    model = for_inference(tiny_model("qwen2", seed=5))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    rows = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    assert _head_inputs_contiguous(model, rows) == [True]
    scored = generation.next_token_logprobs(model, rows, pad_id=0)
    reference = tiny_model("qwen2", seed=5).double()
    for row, got in zip(rows, scored):
        logits = reference(torch.tensor([row])).logits[0, -1]
        torch.testing.assert_close(got.double(), torch.log_softmax(logits, -1), rtol=0, atol=1e-5)


def _head_inputs_contiguous(model, rows: list[list[int]]) -> list[bool]:
    """Whether each input the output head receives while `rows` are scored next-token is contiguous."""
    seen = []
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _head, args: seen.append(args[0].is_contiguous())
    )
    generation.next_token_logprobs(model, rows, pad_id=0)
    handle.remove()
    return seen
