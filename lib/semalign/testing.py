"""Tiny random-initialised models and a tokenizer built in code, for tests and speed benchmarks.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on a few built-in sentences,
and the models are built from a config with random weights (seeded, so every test sees the same model).
`real_shape_config` gives the real 1.5B/0.5B shapes for GPU speed benchmarks (weights do not matter
for speed).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "Question: What is 12 plus 30? Answer: 42",
    "The answer is A. The answer is B. The answer is C. The answer is D.",
    "Alice has 3 apples and buys 4 more. How many apples does she have? 7",
    "import math\nprint(math.sqrt(16))\n",
    "A language model predicts the next token from the previous ones.",
]
_SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with a ChatML-style chat template; deterministic for a given size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>"
    )
    wrapped.chat_template = _CHAT_TEMPLATE
    return wrapped


def tiny_config(
    arch: str = "qwen2",
    vocab_size: int = 320,
    hidden_size: int = 48,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 96,
    tie_word_embeddings: bool = False,
) -> PretrainedConfig:
    """Config of a tiny Llama- or Qwen2-style decoder (`arch` is "llama" or "qwen2")."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"tiny_config: arch must be 'llama' or 'qwen2', got {arch!r}")


def build_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A float32 model with seeded random weights, in eval mode. The final norm gets a non-trivial gain
    so that tests see the difference between the head and the norm-folded head."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.5, 1.5)
    return model.eval()


def tiny_model(arch: str = "qwen2", seed: int = 0, **config_overrides) -> PreTrainedModel:
    """Shorthand: `build_model(tiny_config(arch, **config_overrides), seed)`."""
    return build_model(tiny_config(arch, **config_overrides), seed)


def real_shape_config(name: str) -> PretrainedConfig:
    """Config with the real shapes of the embedded default pair, for speed benchmarks on random weights.

    `name` is "qwen2.5-coder-1.5b" (28 layers, d 1536) or "qwen2.5-coder-0.5b" (24 layers, d 896).
    """
    shapes = {
        "qwen2.5-coder-1.5b": dict(
            hidden_size=1536,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            intermediate_size=8960,
        ),
        "qwen2.5-coder-0.5b": dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
        ),
    }
    if name not in shapes:
        raise ValueError(f"real_shape_config: unknown name {name!r}; choose one of {sorted(shapes)}")
    return Qwen2Config(
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        **shapes[name],
    )
