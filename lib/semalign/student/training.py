"""Student training from the cache: LoRA on the paired layers only, v1 / v2 / sft / kd objectives.

v1 (paper §4.3): all trained layers' adapters together; loss = layer_weight · mean_k (1 − cos(Δh_k, target_k))
    + output_weight · (1 − cos(z, onehot(y))).
v2 (newest abstract): shallow to deep, one phase per trained layer, only the frontier layer's adapters
    trainable; loss = layer_weight · relation_geometry(Δh_k, target_k) + output_weight · KL(teacher ‖ student)
    from the cached top-k. The phases share the run's epochs × steps_per_epoch optimizer steps evenly (the
    shallower phases take the remainder), so v2 costs what v1 costs.
sft: cross-entropy only, same adapters and data (the task-matched baseline).
kd (torchtune's knowledge_distillation recipe): output term = (1 − kd_weight) · cross-entropy
    + kd_weight · KL(teacher ‖ student) from the cached top-k, same adapters and data as sft, no targets.
`objective` is a variant name (`semalign.student.variants`): v1 and v2 name the latent map of their targets,
and `-s<n>` trains with seed + n.
Δh_k = h_k − h_{k−1} is the layer's residual contribution ("before residual addition"). Gradients flow
through the whole network; only LoRA parameters of the trained layers update.

Under torchrun `parallel` picks how the ranks share the student: "ddp" keeps a whole copy on each rank,
"fsdp" shards every weight, frozen ones included, over the ranks (FSDP2: each decoder layer, then the rest),
for a student too large for one device. A sharded student's forward passes are collectives: every rank
runs them (`layer_alignment` too) and every rank calls `save_adapter`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from semalign.config import at_least, between, positive
from semalign.data import Encoded
from semalign.distributed import Ranks, Shard
from semalign.errors import SemalignError
from semalign.models import check_precision, compute_precision, decoder_layers, empty_hf_model, load_hf_dir
from semalign.progress import progress
from semalign.store import StoreRows
from semalign.student.objectives import (
    cross_entropy_loss,
    interface_similarity,
    kd_loss,
    kept_pairs,
    layer_cosine_loss,
    next_token_positions,
    output_cosine_loss,
    relation_geometry_loss,
    supervised_positions,
    topk_kl_loss,
)
from semalign.student.variants import Variant, parse_variant
from semalign.teacher.activations import ResidualRecorder
from semalign.teacher.bases import VocabAlignment

PARALLEL = ("ddp", "fsdp")
TERMS = ("loss", "layer_term", "output_term")
Rows = torch.Tensor | StoreRows  # a split's array `[N, ...]`, indexable by a tensor of row numbers


@dataclass(frozen=True)
class TrainConfig:
    """`train` section. objective: a variant name (`parse_variant`); batch_size is the effective batch
    (gradient accumulation over micro batches); kd_weight: kd's share of KL against cross-entropy;
    parallel: how processes under torchrun share the student: "ddp" (a whole copy each) | "fsdp" (sharded);
    dtype: the precision of the forward and backward passes (`models.compute_precision`); the adapters,
    optimizer state and losses stay float32."""

    objective: str = "v1"
    lora_r: int = positive(16)
    lora_alpha: int = positive(32)
    lora_dropout: float = between(0.05, 0, 1, high_inclusive=False)
    target_modules: tuple[str, ...] = ("up_proj", "down_proj", "v_proj", "o_proj")
    lr: float = positive(3e-4)
    epochs: int = positive(5)
    batch_size: int = positive(64)
    micro_batch_size: int = positive(4)
    weight_decay: float = at_least(0.0, 0)
    layer_weight: float = at_least(1.0, 0)
    output_weight: float = at_least(1.0, 0)
    kl_positions: str = "all"
    kd_weight: float = between(0.5, 0.0, 1.0)
    max_grad_norm: float = positive(1.0)
    explode_factor: float = positive(100.0)
    seed: int = at_least(0, 0)
    parallel: str = "ddp"
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        parse_variant(self.objective)
        if not 0.0 <= self.kd_weight <= 1.0:
            raise SemalignError(f"train.kd_weight {self.kd_weight} must be a share between 0 and 1")
        if self.batch_size % self.micro_batch_size:
            raise SemalignError(
                f"train.batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}; change one of them"
            )
        if self.kl_positions not in ("all", "answer"):
            raise SemalignError(f"train.kl_positions {self.kl_positions!r} must be 'all' or 'answer'")
        check_precision("train.dtype", self.dtype)
        if self.parallel not in PARALLEL:
            raise SemalignError(
                f"train.parallel {self.parallel!r} is unknown; use 'ddp' (a whole student on each "
                "process) or 'fsdp' (the student sharded over the processes, when it does not fit "
                "on one device)"
            )

    @property
    def variant(self) -> Variant:
        """The parsed `objective`: objective kind, latent map of the targets, seed offset."""
        return parse_variant(self.objective)

    @property
    def run_seed(self) -> int:
        """The seed this run trains with (adapter initialisation, data order, dropout): seed + the variant's
        -s<n>."""
        return self.seed + self.variant.seed_offset


@dataclass
class TrainingBatch:
    """One micro batch, cut to its longest real example. Token tensors `[B, T]`; targets: student layer k ->
    `[B, T, d_student]`; topk_*: `[B, T, k]`; rest_logmass `[B, T]` (the last three only for v2 and kd)."""

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


def token_tensors(encoded: Encoded, vocab: VocabAlignment | None = None) -> dict[str, torch.Tensor]:
    """The `[N, T]` token tensors of a split that a micro batch takes, input_ids, attention_mask, labels, in
    the student's token ids: the data is tokenised by the teacher and `vocab` matches the two by token
    (None: the ids as they are, for a student of the teacher's very vocabulary)."""
    if vocab is None:
        return {
            "input_ids": encoded.input_ids,
            "attention_mask": encoded.attention_mask,
            "labels": encoded.labels,
        }
    return {
        "input_ids": vocab.student_inputs(encoded.input_ids, encoded.attention_mask),
        "attention_mask": encoded.attention_mask,
        "labels": vocab.student_ids(encoded.labels),
    }


@dataclass(frozen=True)
class StudentIds:
    """A row source of cached teacher token ids `[N, T, k]` read as student ids (−1: the student lacks the
    token; `topk_kl_loss` moves its mass into the rest bucket)."""

    rows: Rows
    vocab: VocabAlignment

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.vocab.student_ids(self.rows[rows])


def micro_batch_rows(num_examples: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled order of `num_examples` rows cut into micro batches of `size` (the last may be smaller)."""
    order = torch.randperm(num_examples, generator=generator)
    return [order[start : start + size] for start in range(0, num_examples, size)]


def gather_batch(
    tensors: Mapping[str, Rows], targets: Mapping[int, Rows], rows: torch.Tensor
) -> TrainingBatch:
    """Rows `rows` of the split as one micro batch cut to its longest real example. `tensors` and `targets`
    map
    names to row sources `[N, T, ...]`: tensors, or stores read on demand (`Store.rows`), so only these rows
    are read."""
    used = int(tensors["attention_mask"][rows].sum(dim=1).max())
    return TrainingBatch(
        targets={k: t[rows][:, :used] for k, t in targets.items()},
        **{name: t[rows][:, :used] for name, t in tensors.items()},
    )


def micro_batches(
    tensors: Mapping[str, Rows], targets: Mapping[int, Rows], size: int, generator: torch.Generator
) -> Iterator[TrainingBatch]:
    """Shuffled micro batches over a split (`input_ids`, `attention_mask`, `labels` and, optionally,
    `topk_logprobs`, `topk_ids`, `rest_logmass`, all `[N, T, ...]`) and targets `[N, T, d]`."""
    for rows in micro_batch_rows(len(tensors["input_ids"]), size, generator):
        yield gather_batch(tensors, targets, rows)


def step_batches(
    tensors: Mapping[str, Rows],
    targets: Mapping[int, Rows],
    config: TrainConfig,
    generator: torch.Generator,
    shard: Shard = Shard(),
) -> Iterator[list[TrainingBatch]]:
    """One epoch, one list per optimizer step: this rank's micro batches of the step's `batch_size` examples.

    The order is the same on every rank (same generator); rank r takes micro batches r, r + world, ... of each
    step and reads only their rows. A last partial step is dropped (as `steps_per_epoch` counts).
    """
    per_step = config.batch_size // config.micro_batch_size
    rows = micro_batch_rows(len(tensors["input_ids"]), config.micro_batch_size, generator)
    for start in range(0, len(rows) - per_step + 1, per_step):
        yield [gather_batch(tensors, targets, r) for r in shard.take(rows[start : start + per_step])]


def add_lora(model: PreTrainedModel, layers: list[int], config: TrainConfig) -> PeftModel:
    """LoRA (PEFT) on `config.target_modules` of student layers `layers` (1-based) only; all else frozen."""
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=[k - 1 for k in layers],
        layers_pattern="layers",
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):  # the adapters' initialisation follows the run's seed, every rank
        torch.manual_seed(config.run_seed)
        return get_peft_model(model, lora)


def load_student(path: Path, layers: list[int], config: TrainConfig, ranks: Ranks) -> PeftModel:
    """The student of the local model directory `path` with LoRA on `layers` (`add_lora`), placed on this rank
    (`place`). Sharded (FSDP), only rank 0 reads the weights: the other ranks build the architecture without
    weights and receive their shards from it, so the hosts hold one copy of the student, not one per
    process."""
    student = empty_hf_model(path) if _sharded(config, ranks) and not ranks.is_main else load_hf_dir(path)[0]
    return place(add_lora(student, layers, config), config, ranks)


def place(model: PeftModel, config: TrainConfig, ranks: Ranks) -> PeftModel:
    """`model` (the student with its adapters, on the CPU) on this rank's device, in place.

    With `config.parallel` "fsdp" under torchrun it is sharded (FSDP2) as it moves: each decoder layer, then
    the root with the embeddings, final norm and head (a tied head stays one parameter), so a rank holds
    1/world of every weight and a forward gathers the root's and one layer's at a time. Every weight, adapters
    and buffers included, is then rank 0's: the other ranks may pass a model on the meta device.
    Otherwise the whole model moves.
    """
    if not _sharded(config, ranks):
        return model.to(ranks.device)
    weights = model.state_dict() if ranks.is_main else {}  # full tensors, on the CPU, on rank 0 only
    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    base = model.get_base_model()
    for block in decoder_layers(base):
        fully_shard(block, mesh=mesh)
    fully_shard(base, mesh=mesh)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=ranks.device)
    set_model_state_dict(
        model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )
    for buffer in model.buffers():  # unsharded and outside the state dict (e.g. rotary frequencies)
        ranks.broadcast(buffer)
    return model


def _sharded(config: TrainConfig, ranks: Ranks) -> bool:
    """Whether `place` shards the student (FSDP in several processes; one process never shards)."""
    return config.parallel == "fsdp" and ranks.world > 1


def lora_parameters(model: PeftModel, layer: int) -> list[torch.nn.Parameter]:
    """The LoRA parameters of student layer `layer` (1-based)."""
    marker = f".layers.{layer - 1}."
    return [p for name, p in model.named_parameters() if "lora_" in name and marker in name]


def _layer_term(
    config: TrainConfig, recorder: ResidualRecorder, batch: TrainingBatch, layers: list[int]
) -> torch.Tensor:
    loss = relation_geometry_loss if config.variant.objective == "v2" else layer_cosine_loss
    terms = [
        loss(recorder.states[k] - recorder.states[k - 1], batch.targets[k], batch.attention_mask)
        for k in layers
    ]
    return torch.stack(terms).mean()


def _output_term(config: TrainConfig, logits: torch.Tensor, labels: torch.Tensor, batch: TrainingBatch):
    objective = config.variant.objective
    if objective == "v1":
        return output_cosine_loss(logits, labels)
    if objective == "sft":
        return cross_entropy_loss(logits, labels)
    positions = next_token_positions(batch.attention_mask, batch.labels, config.kl_positions)
    topk = (batch.topk_logprobs, batch.topk_ids, batch.rest_logmass)
    if objective == "kd":
        return kd_loss(logits, labels, *topk, positions, config.kd_weight)
    return topk_kl_loss(logits, *topk, positions)


def batch_losses(
    model: PeftModel,
    batch: TrainingBatch,
    layers: list[int],
    config: TrainConfig,
    forward: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """{"layer_term", "output_term", "loss"} of one micro batch for the trained `layers` (with graph).
    `forward` runs the model (its DDP wrapper under torchrun); `model` itself by default.

    v1 and sft read the logits only where the next token is supervised (an MMLU answer: 2 of ~300
    positions), so the LM head `[vocab, d]` runs there only (`kept_pairs`): a quarter of the forward's
    arithmetic and `[B, T, vocab]` float32 logits (0.9 GB at 4 x 384) saved."""
    device = next(model.parameters()).device
    batch = TrainingBatch(
        **{
            name: {k: t.to(device) for k, t in value.items()}
            if isinstance(value, dict)
            else (value.to(device) if value is not None else None)
            for name, value in vars(batch).items()
        }
    )
    needed = sorted({k for k in layers} | {k - 1 for k in layers}) if uses_targets(config) else []
    keep = supervised_positions(batch.labels) if config.variant.objective in ("v1", "sft") else None
    with (
        ResidualRecorder(model.get_base_model(), needed, detach=False) as recorder,
        compute_precision(device, config.dtype),
    ):
        logits = (forward or model)(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            use_cache=False,
            **({"logits_to_keep": keep} if keep is not None else {}),
        ).logits
    logits, labels = (logits, batch.labels) if keep is None else kept_pairs(logits, batch.labels, keep)
    layer_term = _layer_term(config, recorder, batch, layers) if needed else torch.zeros((), device=device)
    output_term = _output_term(config, logits, labels, batch)
    return {
        "layer_term": layer_term,
        "output_term": output_term,
        "loss": config.layer_weight * layer_term + config.output_weight * output_term,
    }


def train(
    model: PeftModel,
    epoch_steps: Callable[[int], Iterable[list[TrainingBatch]]],
    layers: list[int],
    config: TrainConfig,
    steps_per_epoch: int,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Optimise the adapters of `layers`; `epoch_steps(epoch)` yields, per optimizer step, this process's
    micro batches of it (`step_batches`).

    Under torchrun (`ranks` of several processes) the model runs in DistributedDataParallel, or, with
    `config.parallel` "fsdp", sharded by `place` beforehand: each rank accumulates its share of the step's
    micro batches and the gradients are averaged (FSDP: reduce-scattered) once per step, on the last micro
    batch, so the update is the one a single process makes on the whole `batch_size` (up to float summation
    order). v2 runs one phase per layer (shallow to deep) with only the frontier's adapters trainable: the
    optimizer gets only those, and a sharded model gathers the others without gradients. The phases split
    the epochs × steps_per_epoch steps evenly (shallower phases take the remainder), one step at least each.
    A non-finite loss, or one above explode_factor × the first step's, stops with the step and term named.
    """
    ranks = ranks or Ranks({})
    if _sharded(config, ranks) and not isinstance(model.get_base_model(), FSDPModule):
        raise SemalignError(
            "train.parallel is 'fsdp' but the student is not sharded; pass it through "
            "semalign.student.training.place(model, config, ranks) before training"
        )
    accumulation = config.batch_size // config.micro_batch_size
    if accumulation % ranks.world:
        raise SemalignError(
            f"train.batch_size {config.batch_size} is {accumulation} micro batches of "
            f"{config.micro_batch_size}, which {ranks.world} processes cannot share evenly; make "
            f"batch_size / micro_batch_size a multiple of {ranks.world} (or start fewer processes)"
        )
    phases = training_phases(config.variant.objective, layers)
    total = config.epochs * steps_per_epoch
    if total < len(phases):
        raise SemalignError(
            f"v2 trains {len(phases)} frontier layers {sorted(layers)} one at a time but the run has only "
            f"{total} optimizer step(s); raise train.epochs or the training split, or lower "
            "pair.frontier_layers"
        )
    steps = (micro for epoch in range(config.epochs) for micro in epoch_steps(epoch))
    result, step, first_loss = TrainResult(), 0, None
    for phase, phase_layers in enumerate(phases, start=1):
        phase_steps = total // len(phases) + (phase <= total % len(phases))
        frontier = [p for k in phase_layers for p in lora_parameters(model, k)]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in frontier:
            p.requires_grad_(True)
        forward = _data_parallel(model, config, ranks)
        optimizer = torch.optim.AdamW(frontier, lr=config.lr, weight_decay=config.weight_decay)
        model.train()
        bar = progress(
            range(phase_steps),
            unit="step",
            desc=ranks.tag(f"train {config.objective} phase {phase}/{len(phases)}"),
        )
        for micro in islice(steps, phase_steps):
            sums = torch.zeros(len(TERMS), dtype=torch.float64)
            for i, batch in enumerate(micro):
                with _gradient_sync(model, forward, sync=i == len(micro) - 1):
                    losses = batch_losses(model, batch, phase_layers, config, forward)
                    for term, value in losses.items():
                        if not torch.isfinite(value):
                            raise SemalignError(
                                f"step {step + 1}, term {term}: loss is {value.item()}; lower "
                                "train.lr (the stores it reads are checked finite and checksummed)"
                            )
                    (losses["loss"] * ranks.world / accumulation).backward()
                sums += (
                    torch.tensor([losses[term].item() for term in TERMS], dtype=torch.float64) / accumulation
                )
            terms = dict(zip(TERMS, ranks.sum_floats(sums).tolist()))
            torch.nn.utils.clip_grad_norm_(frontier, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            first_loss = terms["loss"] if first_loss is None else first_loss
            if terms["loss"] > config.explode_factor * max(first_loss, 1e-8):
                raise SemalignError(
                    f"step {step}: loss {terms['loss']:.4g} exploded (> {config.explode_factor}"
                    f" × first step's {first_loss:.4g}); lower train.lr"
                )
            result.records.append({"step": step, "phase": phase, "layer": phase_layers[-1], **terms})
            bar.update(1)
        bar.close()
    model.eval()
    return result


def uses_targets(config: TrainConfig) -> bool:
    """Whether the objective has a layer term on the targets (v1, v2); sft and kd train the output alone."""
    return config.variant.map is not None


def uses_topk(config: TrainConfig) -> bool:
    """Whether the objective reads the teacher's cached top-k (v2, kd)."""
    return config.variant.objective in ("v2", "kd")


def training_phases(objective: str, layers: list[int]) -> list[list[int]]:
    """The student layers trainable in each phase for objective kind `objective` (v1 | v2 | sft | kd): v2
    one frontier layer per phase, shallow to deep; the others all `layers` in one phase."""
    return [[k] for k in sorted(layers)] if objective == "v2" else [sorted(layers)]


def _data_parallel(model: PeftModel, config: TrainConfig, ranks: Ranks) -> torch.nn.Module:
    """The model itself in one process or sharded (FSDP picks up each phase's trainable parameters when it
    gathers them); under torchrun with DDP, wrapped over the parameters now trainable (rebuilt each v2 phase,
    as the frontier moves)."""
    if ranks.world == 1 or _sharded(config, ranks):
        return model
    return DistributedDataParallel(model, device_ids=[ranks.device] if ranks.device.type == "cuda" else None)


@contextmanager
def _gradient_sync(model: PeftModel, forward: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Around one micro batch's forward and backward: the gradients are averaged across ranks only if `sync`
    (the step's last micro batch); before that each rank accumulates its own (DDP's `no_sync`, FSDP's
    `set_requires_gradient_sync`)."""
    base = model.get_base_model()
    if isinstance(base, FSDPModule):
        base.set_requires_gradient_sync(sync)
        yield
    elif sync or forward is model:
        yield
    else:
        with forward.no_sync():
            yield


def steps_per_epoch(num_examples: int, config: TrainConfig) -> int:
    """Optimizer steps in one epoch (a last partial accumulation is dropped)."""
    return (math.ceil(num_examples / config.micro_batch_size)) // (
        config.batch_size // config.micro_batch_size
    )


@torch.no_grad()
def layer_alignment(
    model: PreTrainedModel | PeftModel, batches: Iterable[TrainingBatch], layers: list[int]
) -> dict[int, dict]:
    """Per trained layer: mean over batches of `interface_similarity(Δh_k, target_k)` ("cosine",
    "relation")."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    device = next(model.parameters()).device
    sums = {k: {"cosine": 0.0, "relation": 0.0} for k in layers}
    count = 0
    for batch in batches:
        mask = batch.attention_mask.to(device)
        with ResidualRecorder(base, sorted(set(layers) | {k - 1 for k in layers})) as recorder:
            model(
                input_ids=batch.input_ids.to(device), attention_mask=mask, use_cache=False, logits_to_keep=1
            )
        for k in layers:
            similarity = interface_similarity(
                recorder.states[k] - recorder.states[k - 1], batch.targets[k].to(device), mask
            )
            for name, value in similarity.items():
                sums[k][name] += value
        count += 1
    if not count:
        raise SemalignError(
            "layer alignment needs at least one held-out batch; raise the alignment split size"
        )
    return {k: {name: value / count for name, value in s.items()} for k, s in sums.items()}


def save_adapter(model: PeftModel, out_dir: str | Path, ranks: Ranks | None = None) -> None:
    """The adapters as safetensors (PEFT's adapter_config.json + adapter_model.safetensors), written by rank
    0.

    Every rank calls it: a sharded student's adapters are gathered to full tensors first (a collective), and
    only the adapters, never the frozen weights, so the files are the ones an unsharded student writes.
    """
    adapters = {name: _full(t) for name, t in model.state_dict().items() if "lora_" in name}
    if not (ranks or Ranks({})).is_main:
        return
    model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=adapters)
    # PEFT keeps target_modules as a set, written in an order that varies from process to process: sort it,
    # so the same adapter is the same bytes (and DVC hash) on every run
    config_file = Path(out_dir) / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["target_modules"] = sorted(config["target_modules"])
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded parameter gathered from every rank (a collective); any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t
