"""Batched model calls for evaluation: next-token log-probs and greedy or sampled completions.

Rows are left-padded, so the last column holds every row's last real token, and positions count from
each row's first real token (position_ids from the attention mask): a padded row scores as it would alone.
Generation pins every decoding knob it does not use to its neutral value, because `model.generate` fills
unset ones from the checkpoint's generation_config (Qwen instruct: sampling at 0.7, repetition penalty 1.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from semalign.errors import SemalignError


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills padding: the pad token, else EOS."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise SemalignError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad_id


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [B, T] int64 with T the longest row, padded on the left."""
    if not rows or min(len(row) for row in rows) == 0:
        raise SemalignError("cannot score an empty prompt; every evaluation item needs a non-empty prompt")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.int64)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def next_token_logprobs(model: PreTrainedModel, rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """log p(next token | row) for each token-id row: [B, V] float32 on the CPU."""
    input_ids, attention_mask = left_pad(rows, pad_id)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    device = model.device
    # logits_to_keep=1: the full [B, T, V] logits of a 150k vocabulary would dwarf the model's activations.
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        logits_to_keep=1,
    ).logits[:, -1]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@dataclass(frozen=True)
class Completion:
    """A completion's text, cut before its stop token, and whether a stop token ended it (False: it ran
    into max_new_tokens)."""

    text: str
    stopped: bool


@torch.no_grad()
def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    temperature: float = 0.0,
    n_samples: int = 1,
    stop_strings: Sequence[str] = (),
) -> list[list[Completion]]:
    """Completions [prompts][n_samples] of each prompt, each cut before its first stop token. Prompts are
    tokenised without special tokens: lm-eval's HFLM adds none, and chat prompts hold the template's own.
    A row also stops decoding once its text holds one of `stop_strings` (the caller cuts the text there):
    greedy rows are independent, so this changes no kept token, only how long a batch decodes.

    temperature 0 decodes greedily (n_samples must be 1); above 0 it samples from the full distribution
    (top_k 0, top_p 1). Torch's global RNG drives sampling: seed it before the call.
    """
    if temperature == 0 and n_samples != 1:
        raise SemalignError(
            f"n_samples={n_samples} greedy completions would all be the same; set temperature > 0"
        )
    pad_id = pad_id_of(tokenizer)
    rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    input_ids, attention_mask = left_pad(rows, pad_id)
    # Greedy search ignores the sampling knobs, so they are only pinned when sampling.
    sampling = (
        {
            "temperature": temperature,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": 0.0,
            "typical_p": 1.0,
            "epsilon_cutoff": 0.0,
            "eta_cutoff": 0.0,
        }
        if temperature > 0
        else {}
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        num_beams=1,
        num_return_sequences=n_samples,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        stop_strings=list(stop_strings) or None,
        **sampling,
    )
    device = model.device
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=config,
        tokenizer=tokenizer,  # generate() matches stop_strings through it
    )
    new_tokens = output[:, input_ids.shape[1] :].cpu().tolist()
    stops = set(stop_ids)
    completions = []
    for ids in new_tokens:
        end = next((i for i, token in enumerate(ids) if token in stops), None)
        completions.append(Completion(tokenizer.decode(ids[:end], skip_special_tokens=True), end is not None))
    # generate() returns the samples of one prompt next to each other.
    return [completions[i * n_samples : (i + 1) * n_samples] for i in range(len(prompts))]
