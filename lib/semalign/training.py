"""Student training from the cache: LoRA on the paired layers only, v1 / v2 / sft objectives.

v1 (paper §4.3): all trained layers' adapters together; loss = layer_weight · mean_k (1 − cos(Δh_k, target_k))
    + output_weight · (1 − cos(z, onehot(y))).
v2 (newest abstract): shallow to deep, one phase per trained layer, only the frontier layer's adapters
    trainable; loss = layer_weight · relation_geometry(Δh_k, target_k) + output_weight · KL(teacher ‖ student)
    from the cached top-k. Each phase runs `epochs` epochs.
sft: cross-entropy only, same adapters and data (the task-matched baseline).
Δh_k = h_k − h_{k−1} is the layer's residual contribution ("before residual addition"). Gradients flow
through the whole network; only LoRA parameters of the trained layers update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from semalign.activations import ResidualRecorder
from semalign.errors import SemalignError
from semalign.objectives import (
    cross_entropy_loss,
    interface_similarity,
    layer_cosine_loss,
    output_cosine_loss,
    relation_geometry_loss,
    topk_kl_loss,
)
from semalign.progress import progress

OBJECTIVES = ("v1", "v2", "sft")


@dataclass(frozen=True)
class TrainConfig:
    """`train` section. batch_size is the effective batch (gradient accumulation over micro batches)."""

    objective: str = "v1"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("up_proj", "down_proj", "v_proj", "o_proj")
    lr: float = 3e-4
    epochs: int = 5
    batch_size: int = 64
    micro_batch_size: int = 4
    weight_decay: float = 0.0
    layer_weight: float = 1.0
    output_weight: float = 1.0
    kl_positions: str = "all"
    max_grad_norm: float = 1.0
    explode_factor: float = 100.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.objective not in OBJECTIVES:
            raise SemalignError(f"train.objective {self.objective!r} is unknown; use one of {OBJECTIVES}")
        if self.batch_size % self.micro_batch_size:
            raise SemalignError(f"train.batch_size {self.batch_size} is not a multiple of micro_batch_size "
                                f"{self.micro_batch_size}; change one of them")
        if self.kl_positions not in ("all", "answer"):
            raise SemalignError(f"train.kl_positions {self.kl_positions!r} must be 'all' or 'answer'")


@dataclass
class TrainingBatch:
    """One micro batch, cut to its longest real example. Token tensors `[B, T]`; targets: student layer k ->
    `[B, T, d_student]`; topk_*: `[B, T, k]`; rest_logmass `[B, T]` (the last three only for v2)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    targets: dict[int, torch.Tensor] = field(default_factory=dict)
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    rest_logmass: torch.Tensor | None = None


@dataclass
class TrainResult:
    """Per optimizer step: {step, phase, layer, loss, layer_term, output_term}."""

    records: list[dict] = field(default_factory=list)


def micro_batches(tensors: dict[str, torch.Tensor], targets: dict[int, torch.Tensor], size: int,
                  generator: torch.Generator) -> Iterator[TrainingBatch]:
    """Shuffled micro batches over in-memory split tensors (`input_ids`, `attention_mask`, `labels` and,
    optionally, `topk_logprobs`, `topk_ids`, `rest_logmass`, all `[N, T, ...]`) and targets `[N, T, d]`."""
    order = torch.randperm(len(tensors["input_ids"]), generator=generator)
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        used = int(tensors["attention_mask"][rows].sum(dim=1).max())
        take = {name: t[rows, :used] for name, t in tensors.items()}
        yield TrainingBatch(targets={k: t[rows, :used] for k, t in targets.items()}, **take)


def add_lora(model: PreTrainedModel, layers: list[int], config: TrainConfig) -> PeftModel:
    """LoRA (PEFT) on `config.target_modules` of student layers `layers` (1-based) only; all else frozen."""
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), layers_to_transform=[k - 1 for k in layers],
                      layers_pattern="layers", bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def lora_parameters(model: PeftModel, layer: int) -> list[torch.nn.Parameter]:
    """The LoRA parameters of student layer `layer` (1-based)."""
    marker = f".layers.{layer - 1}."
    return [p for name, p in model.named_parameters() if "lora_" in name and marker in name]


def _layer_term(config: TrainConfig, recorder: ResidualRecorder, batch: TrainingBatch, layers: list[int]) -> torch.Tensor:
    loss = relation_geometry_loss if config.objective == "v2" else layer_cosine_loss
    terms = [loss(recorder.states[k] - recorder.states[k - 1], batch.targets[k], batch.attention_mask) for k in layers]
    return torch.stack(terms).mean()


def _output_term(config: TrainConfig, logits: torch.Tensor, batch: TrainingBatch) -> torch.Tensor:
    if config.objective == "v1":
        return output_cosine_loss(logits, batch.labels)
    if config.objective == "sft":
        return cross_entropy_loss(logits, batch.labels)
    positions = batch.attention_mask.bool()
    if config.kl_positions == "answer":  # the distribution at t is over the token at t + 1
        positions = torch.zeros_like(positions)
        positions[:, :-1] = batch.labels[:, 1:] != -100
    return topk_kl_loss(logits, batch.topk_logprobs, batch.topk_ids, batch.rest_logmass, positions)


def batch_losses(model: PeftModel, batch: TrainingBatch, layers: list[int], config: TrainConfig) -> dict[str, torch.Tensor]:
    """{"layer_term", "output_term", "loss"} of one micro batch for the trained `layers` (with graph)."""
    device = next(model.parameters()).device
    batch = TrainingBatch(**{name: {k: t.to(device) for k, t in value.items()} if isinstance(value, dict)
                             else (value.to(device) if value is not None else None)
                             for name, value in vars(batch).items()})
    needed = sorted({k for k in layers} | {k - 1 for k in layers}) if config.objective != "sft" else []
    with ResidualRecorder(model.get_base_model(), needed, detach=False) as recorder:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    layer_term = _layer_term(config, recorder, batch, layers) if needed else torch.zeros((), device=device)
    output_term = _output_term(config, logits, batch)
    return {"layer_term": layer_term, "output_term": output_term,
            "loss": config.layer_weight * layer_term + config.output_weight * output_term}


def train(model: PeftModel, epoch_batches: Callable[[int], Iterable[TrainingBatch]], layers: list[int],
          config: TrainConfig, steps_per_epoch: int) -> TrainResult:
    """Optimise the adapters of `layers`; `epoch_batches(epoch)` yields that epoch's micro batches.

    v2 runs one phase per layer (shallow to deep) with only the frontier's adapters trainable.
    A non-finite loss, or one above explode_factor × the first step's, stops with the step and term named.
    """
    accumulation = config.batch_size // config.micro_batch_size
    phases = [[k] for k in sorted(layers)] if config.objective == "v2" else [sorted(layers)]
    result, step, first_loss = TrainResult(), 0, None
    for phase, phase_layers in enumerate(phases, start=1):
        frontier = [p for k in phase_layers for p in lora_parameters(model, k)]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in frontier:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(frontier, lr=config.lr, weight_decay=config.weight_decay)
        model.train()
        total = config.epochs * steps_per_epoch
        bar = progress(range(total), desc=f"train {config.objective} phase {phase}/{len(phases)}", unit="step")
        for epoch in range(config.epochs):
            pending, sums = 0, {"loss": 0.0, "layer_term": 0.0, "output_term": 0.0}
            for batch in epoch_batches(epoch):
                losses = batch_losses(model, batch, phase_layers, config)
                for term, value in losses.items():
                    if not torch.isfinite(value):
                        raise SemalignError(f"step {step + 1}, term {term}: loss is {value.item()}; lower train.lr "
                                            "or check the targets store (rerun `dvc repro align`)")
                (losses["loss"] / accumulation).backward()
                for term in sums:
                    sums[term] += losses[term].item() / accumulation
                pending += 1
                if pending == accumulation:
                    torch.nn.utils.clip_grad_norm_(frontier, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    first_loss = sums["loss"] if first_loss is None else first_loss
                    if sums["loss"] > config.explode_factor * max(first_loss, 1e-8):
                        raise SemalignError(f"step {step}: loss {sums['loss']:.4g} exploded (> {config.explode_factor}"
                                            f" × first step's {first_loss:.4g}); lower train.lr")
                    result.records.append({"step": step, "phase": phase, "layer": phase_layers[-1], **sums})
                    bar.update(1)
                    pending, sums = 0, {"loss": 0.0, "layer_term": 0.0, "output_term": 0.0}
        bar.close()
    model.eval()
    return result


def steps_per_epoch(num_examples: int, config: TrainConfig) -> int:
    """Optimizer steps in one epoch (a last partial accumulation is dropped)."""
    return (math.ceil(num_examples / config.micro_batch_size)) // (config.batch_size // config.micro_batch_size)


@torch.no_grad()
def layer_alignment(model: PreTrainedModel | PeftModel, batches: Iterable[TrainingBatch], layers: list[int]) -> dict[int, dict]:
    """Per trained layer: mean over batches of `interface_similarity(Δh_k, target_k)` ("cosine", "relation")."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    sums = {k: {"cosine": 0.0, "relation": 0.0} for k in layers}
    count = 0
    for batch in batches:
        with ResidualRecorder(base, sorted(set(layers) | {k - 1 for k in layers})) as recorder:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        for k in layers:
            similarity = interface_similarity(recorder.states[k] - recorder.states[k - 1], batch.targets[k],
                                              batch.attention_mask)
            for name, value in similarity.items():
                sums[k][name] += value
        count += 1
    if not count:
        raise SemalignError("layer alignment needs at least one held-out batch; raise the alignment split size")
    return {k: {name: value / count for name, value in s.items()} for k, s in sums.items()}


def save_adapter(model: PeftModel, out_dir: str | Path) -> None:
    """The adapters as safetensors (PEFT's adapter_config.json + adapter_model.safetensors)."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
