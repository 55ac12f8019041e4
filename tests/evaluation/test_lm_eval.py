"""The `lm_eval` MMLU protocol against the reference implementation: lm-evaluation-harness builds the requests
from its own installed MMLU template (a local file stands in for the dataset: no download), and its HFLM
scores them; the project's prompts and batched, left-padded scorer must agree on every letter."""

import json
from pathlib import Path

import pytest
import yaml

from semalign.evaluation.prompts import MMLU_DESCRIPTION, eval_prompt
from semalign.evaluation.runner import EvalConfig, evaluate_task
from semalign.tasks import LETTERS, TaskItem
from semalign.testing import tiny_model, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

VOCAB = 360  # the smallest tiny vocabulary in which " A" .. " D" are single tokens
TEMPLATE = "tasks/mmlu/default/_default_template_yaml"


def _items():
    """MMLU items of different lengths (so batches pad), one with options that need no stripping."""
    questions = ["What is 12 plus 30?", "2?", "Which one is a prime number among the following options?"]
    return [
        TaskItem(
            "mmlu",
            f"mmlu/{i:05d}",
            questions[i % 3] + " x" * i,
            LETTERS[i % 4],
            choices=("12", "thirty two", "42", f"a b {i}"),
        )
        for i in range(7)
    ]


def _reference_requests(items, tmp_path):
    """lm-eval's zero-shot requests for `items` through its installed MMLU default template."""
    config = yaml.safe_load((Path(lm_eval.__file__).parent / TEMPLATE).read_text())
    data = tmp_path / "mmlu.jsonl"
    rows = [
        {"question": it.question, "choices": list(it.choices), "answer": LETTERS.index(it.answer)}
        for it in items
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for key in ("fewshot_split", "fewshot_config"):  # zero-shot: no few-shot split to read
        config.pop(key)
    config |= {
        "task": "mmlu_local",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "cache")},
        # lm-eval's line names the subject; our items have none, so the clause is left out (prompts.py)
        "description": MMLU_DESCRIPTION,
    }
    task = ConfigurableTask(config=config)
    docs = list(task.test_docs())
    return [
        task.construct_requests(doc, task.fewshot_context(doc, 0), metadata=("mmlu_local", i, 1))
        for i, doc in enumerate(docs)
    ]


def test_lm_eval_protocol_prompts_and_scores_match_lm_evaluation_harness(tmp_path):
    tokenizer, model = tiny_tokenizer(VOCAB), tiny_model("qwen2", vocab_size=VOCAB)
    items = _items()
    requests = _reference_requests(items, tmp_path)
    for item, per_letter in zip(items, requests):
        assert [r.args for r in per_letter] == [
            (eval_prompt(tokenizer, item, "lm_eval"), " " + letter) for letter in LETTERS
        ]
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    scores = reference.loglikelihood([r for per_letter in requests for r in per_letter])

    config = EvalConfig(batch_size=3, protocol="lm_eval")
    ours = evaluate_task(model, tokenizer, "mmlu", items, config, "lm_eval", tmp_path / "r.jsonl")
    lengths = {len(tokenizer(eval_prompt(tokenizer, item, "lm_eval"))["input_ids"]) for item in items}
    assert len(lengths) > 3  # the batches really were padded
    for k, result in enumerate(ours):
        for j, letter in enumerate(LETTERS):
            logprob, _ = scores[4 * k + j]
            assert result.detail["logprobs"][letter] == pytest.approx(logprob, abs=1e-4), (k, letter)
