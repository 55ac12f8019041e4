"""LaTen (Tan et al., ACL 2025): locate task neurons statically, align them with a hypernetwork, inject once.

Locate. The answer log-probability of a residual state h is lp(h) = log softmax(head(norm(h)))[y],
read through the final norm and LM head at each position that predicts an answer token y.
  - Layer ℓ's score: the mean gain lp(h_ℓ) − lp(h_{ℓ−1}) of its whole update (attention + FFN).
  - A neuron's score: the first-order gain of its own contribution to the residual, g · v, with g = ∇lp
    at the residual it is added to (h_{ℓ−1} for attention, h_mid = h_{ℓ−1} + attention output for FFN),
    summed over answer positions and averaged over examples (signed: neurons that raise the answer rank
    first). No backward pass through the network: g is local to the final norm and head.
What a neuron is, per module (the vector moved always has d_model entries):
  - FFN neuron i: row i of up_proj `[ffn, d]` and column i of down_proj `[d, ffn]`; v = act_i · down[:, i].
  - o_proj channel j: column j of o_proj `[d, H·hd]`; v = z_j · o[:, j] (z: o_proj's input, heads
concatenated).
  - v_proj channel (k, c): row k·hd + c of v_proj `[KV·hd, d]`; its score is the sum of the o-channel
    scores (h, c) over the query heads h that read kv head k ("per head through value → o").
Counts: k = round(neuron_fraction × the student's width) per module, at least 1.
Layers: the top num_layers teacher layers (default: the student's depth) in depth order; teacher layer
j of that list feeds student layer j. Receivers: the student's neurons ranked the same way on the same
split; the teacher's r-th ranked neuron feeds the student's r-th ranked neuron of the same module.

Align. One hypernetwork per module kind, Linear(d_T, d_T) → ReLU → Linear(d_T, d_S), its last layer
initialised near zero, maps each selected teacher neuron's vector `[d_T]` to a student delta `[d_S]`.
Loss: the injected student's answer cross-entropy + penalty · mean(δ²); AdamW; student weights frozen.
Inject. ΔW = the deltas at the receiver rows / columns, zero elsewhere; no post-training.

Deviations from the paper, and why: locating runs once over the whole alignment split rather than on one
"extract" example per step (the static scores of 16 examples are steadier than one example's, and it
costs one teacher pass instead of one per step, which keeps the teacher out of memory while training);
each step draws batch_size examples from that split (paper: 1 + 15); neuron scores are the first-order
gain g · v rather than the exact log-prob difference per neuron (the exact one needs a vocabulary-sized
product per neuron, ~10⁴ per layer: hours on a CPU).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from semalign.baselines.delta import target_linears, weight_keys
from semalign.baselines.seeking import select_layers
from semalign.config import at_least, positive
from semalign.data import load_split
from semalign.errors import SemalignError
from semalign.models import (
    check_precision,
    compute_precision,
    decoder_layers,
    final_norm,
    load_hf_dir,
    model_info,
)
from semalign.progress import progress
from semalign.student.objectives import cross_entropy_loss, kept_pairs, supervised_positions
from semalign.teacher.activations import ResidualRecorder

ROW_KINDS = ("up_proj", "v_proj")  # a neuron owns a row: the module reads the residual stream
COLUMN_KINDS = ("down_proj", "o_proj")  # a neuron owns a column: the module writes to it
KINDS = ROW_KINDS + COLUMN_KINDS
Site = tuple[int, str]  # (layer ℓ = 1..L, module kind)


@dataclass(frozen=True)
class LatenConfig:
    """`laten` section. num_layers: teacher layers kept (null: the student's depth); neuron_fraction: share of
    the student's neurons per module that receive a delta; steps × batch_size alignment examples; AdamW lr and
    weight_decay; penalty: weight of mean(δ²); init_std: std of the hypernetworks' last layer; dtype: the
    precision of the alignment steps' forward and backward passes (as train.dtype)."""

    num_layers: int | None = positive(None)
    neuron_fraction: float = 0.1
    target_modules: tuple[str, ...] = KINDS
    steps: int = positive(16)
    batch_size: int = positive(4)
    lr: float = positive(1e-5)
    weight_decay: float = at_least(0.05, 0)
    penalty: float = at_least(1000.0, 0)
    init_std: float = positive(1e-3)
    seed: int = at_least(0, 0)
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        check_precision("laten.dtype", self.dtype)
        unknown = sorted(set(self.target_modules) - set(KINDS))
        if unknown:
            raise SemalignError(
                f"laten.target_modules {unknown} have no neuron definition; use a subset of {KINDS}"
            )
        if not 0 < self.neuron_fraction <= 1:
            raise SemalignError(f"laten.neuron_fraction {self.neuron_fraction} must be in (0, 1]")


@dataclass
class Attribution:
    """layers: {ℓ: mean answer log-prob gain of layer ℓ}; neurons: {(ℓ, kind): [width] signed scores}."""

    layers: dict[int, float]
    neurons: dict[Site, torch.Tensor]


@dataclass
class Plan:
    """What moves where. teacher_layers[j − 1] feeds student layer j; per student site (j, kind):
    teacher_vectors `[k, d_T]` (the teacher neurons' vectors, rank order) and receivers `[k]` (student neuron
    indices, same rank order)."""

    teacher_layers: list[int]
    teacher_vectors: dict[Site, torch.Tensor] = field(default_factory=dict)
    receivers: dict[Site, torch.Tensor] = field(default_factory=dict)


def answer_logprob(model: PreTrainedModel, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """lp(h): log-probability of `targets` `[P]` read from residual states h `[..., P, d]` through the final
    norm and LM head, `[..., P]`."""
    logits = model.get_output_embeddings()(final_norm(model)(h)).float()
    return (
        torch.log_softmax(logits, dim=-1)
        .gather(-1, targets.expand(*logits.shape[:-1])[..., None])
        .squeeze(-1)
    )


def _capture_inputs(modules: dict[int, nn.Module], store: dict[int, tuple[torch.Tensor, torch.Tensor]]):
    def hook_for(ell):
        def hook(_module, inputs, output):
            store[ell] = (inputs[0].detach(), output.detach())

        return hook

    return [module.register_forward_hook(hook_for(ell)) for ell, module in modules.items()]


def attribute(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> Attribution:
    """Static layer and neuron scores (module docstring) over right-padded `[N, T]` examples, labels −100
    off the answer tokens. Neuron scores for all four kinds."""
    num_layers = len(decoder_layers(model))
    writers = target_linears(model, ("o_proj", "down_proj"))
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    layer_gain = torch.zeros(num_layers, dtype=torch.float64)
    o_score = {
        ell: torch.zeros(writers[(ell, "o_proj")].weight.shape[1], dtype=torch.float64)
        for ell in range(1, num_layers + 1)
    }
    ffn_score = {
        ell: torch.zeros(writers[(ell, "down_proj")].weight.shape[1], dtype=torch.float64)
        for ell in range(1, num_layers + 1)
    }
    device = next(model.parameters()).device
    for row in progress(range(len(input_ids)), desc="laten: attribution", unit="example"):
        used = int(attention_mask[row].sum())
        positions = (labels[row, 1:used] != -100).nonzero()[:, 0]
        if len(positions) == 0:
            raise SemalignError(f"example {row} has no answer token; check data.max_length")
        targets = labels[row, positions + 1].to(device)
        attn, ffn = {}, {}
        hooks = _capture_inputs({ell: writers[(ell, "o_proj")] for ell in range(1, num_layers + 1)}, attn)
        hooks += _capture_inputs({ell: writers[(ell, "down_proj")] for ell in range(1, num_layers + 1)}, ffn)
        try:
            with ResidualRecorder(model, range(num_layers + 1)) as recorder, torch.no_grad():
                model(  # the states are read, not the logits (answer_logprob applies the head where needed)
                    input_ids=input_ids[row : row + 1, :used].to(device),
                    attention_mask=attention_mask[row : row + 1, :used].to(device),
                    use_cache=False,
                    logits_to_keep=1,
                )
        finally:
            for hook in hooks:
                hook.remove()
        states = torch.stack(
            [recorder.states[ell][0, positions] for ell in range(num_layers + 1)]
        )  # [L+1, P, d]
        mids = states[:-1] + torch.stack(
            [attn[ell][1][0, positions] for ell in range(1, num_layers + 1)]
        )  # [L, P, d]
        points = torch.cat([states, mids]).requires_grad_(True)
        with torch.enable_grad():
            lp = answer_logprob(model, points, targets)  # [2L+1, P]
            (grads,) = torch.autograd.grad(lp.sum(), points)
        lp = lp.detach().double()
        layer_gain += (lp[1 : num_layers + 1] - lp[:num_layers]).mean(dim=1).cpu()
        for ell in range(1, num_layers + 1):
            g_in, g_mid = grads[ell - 1], grads[num_layers + ell]  # at h_{ℓ−1} and at h_mid of layer ℓ
            z, act = attn[ell][0][0, positions], ffn[ell][0][0, positions]
            o_score[ell] += (z * (g_in @ writers[(ell, "o_proj")].weight.detach())).sum(0).double().cpu()
            ffn_score[ell] += (
                (act * (g_mid @ writers[(ell, "down_proj")].weight.detach())).sum(0).double().cpu()
            )
    count = len(input_ids)
    neurons = {}
    for ell in range(1, num_layers + 1):
        o, f = o_score[ell] / count, ffn_score[ell] / count
        head_dim = len(o) // heads
        neurons[(ell, "o_proj")] = o
        neurons[(ell, "v_proj")] = o.view(kv_heads, heads // kv_heads, head_dim).sum(1).flatten()
        neurons[(ell, "up_proj")] = neurons[(ell, "down_proj")] = f
    return Attribution({ell: float(layer_gain[ell - 1] / count) for ell in range(1, num_layers + 1)}, neurons)


def neuron_width(weight: torch.Tensor, kind: str) -> int:
    """How many neurons a module of `kind` with `weight` `[out, in]` has (rows or columns)."""
    return weight.shape[0] if kind in ROW_KINDS else weight.shape[1]


def neuron_vectors(weight: torch.Tensor, neurons: torch.Tensor, kind: str) -> torch.Tensor:
    """The `[k, d_model]` vectors of `neurons` `[k]`: rows of up/v, columns of down/o."""
    return weight[neurons] if kind in ROW_KINDS else weight[:, neurons].T


def inject_neurons(
    weight: torch.Tensor, neurons: torch.Tensor, delta: torch.Tensor, kind: str
) -> torch.Tensor:
    """weight + delta `[k, d_model]` at `neurons` (rows of up/v, columns of down/o); differentiable in
    delta."""
    if kind in ROW_KINDS:
        return weight.index_add(0, neurons, delta.to(weight.dtype))
    return weight.index_add(1, neurons, delta.T.to(weight.dtype))


def plan_transfer(
    teacher: PreTrainedModel,
    teacher_scores: Attribution,
    student_scores: Attribution,
    student_widths: dict[str, int],
    config: LatenConfig,
) -> Plan:
    """Layers, teacher neurons and student receivers (module docstring); `student_widths`: {kind: neurons}."""
    student_layers = sorted({ell for ell, _ in student_scores.neurons})
    layers = select_layers(teacher_scores.layers, config.num_layers or len(student_layers))
    if len(layers) > len(student_layers):
        raise SemalignError(
            f"laten.num_layers {len(layers)} exceeds the student's {len(student_layers)} layers"
        )
    linears = target_linears(teacher, config.target_modules)
    plan = Plan(teacher_layers=layers)
    for j, ell in enumerate(layers, start=1):
        for kind in config.target_modules:
            k = max(1, round(config.neuron_fraction * student_widths[kind]))
            teacher_rank = teacher_scores.neurons[(ell, kind)]
            if k > len(teacher_rank):
                raise SemalignError(
                    f"{k} {kind} neurons exceed the teacher's {len(teacher_rank)}; lower "
                    "laten.neuron_fraction"
                )
            chosen = teacher_rank.topk(k).indices
            plan.teacher_vectors[(j, kind)] = (
                neuron_vectors(linears[(ell, kind)].weight.detach(), chosen, kind).float().clone()
            )
            plan.receivers[(j, kind)] = student_scores.neurons[(j, kind)].topk(k).indices
    return plan


class Hypernetworks(nn.Module):
    """One Linear(d_T, d_T) → ReLU → Linear(d_T, d_S) per module kind; the last layer starts near zero, so
    the injected student starts at the student."""

    def __init__(
        self, kinds: tuple[str, ...], d_teacher: int, d_student: int, init_std: float, seed: int = 0
    ):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.nets = nn.ModuleDict()
        for kind in kinds:
            net = nn.Sequential(nn.Linear(d_teacher, d_teacher), nn.ReLU(), nn.Linear(d_teacher, d_student))
            with torch.no_grad():
                bound = d_teacher**-0.5
                net[0].weight.uniform_(-bound, bound, generator=generator)
                net[0].bias.zero_()
                net[2].weight.normal_(0.0, init_std, generator=generator)
                net[2].bias.zero_()
            self.nets[kind] = net

    def forward(self, teacher_vectors: dict[Site, torch.Tensor]) -> dict[Site, torch.Tensor]:
        """{site: `[k, d_T]`} -> {site: `[k, d_S]`} student deltas."""
        return {site: self.nets[site[1]](vectors) for site, vectors in teacher_vectors.items()}


def injected_weights(
    student: PreTrainedModel, plan: Plan, deltas: dict[Site, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """{student state-dict key: weight with the deltas added at the receivers} (with graph, for training)."""
    linears = target_linears(student, tuple(sorted({kind for _, kind in deltas})))
    keys = weight_keys(student, linears)
    return {
        keys[site]: inject_neurons(linears[site].weight, plan.receivers[site], delta, site[1])
        for site, delta in deltas.items()
    }


def train_hypernetworks(
    student: PreTrainedModel,
    hypernets: Hypernetworks,
    plan: Plan,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    config: LatenConfig,
) -> list[dict]:
    """Train the hypernetworks (student frozen): per step, batch_size examples drawn from `[N, T]`; loss =
    the injected student's answer cross-entropy + penalty · mean(δ²). Returns {step, loss, lm_loss,
    penalty}."""
    student.requires_grad_(False)
    optimizer = torch.optim.AdamW(hypernets.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    device = next(student.parameters()).device
    records = []
    for step in progress(range(1, config.steps + 1), desc="laten: align", unit="step"):
        rows = torch.randperm(len(input_ids), generator=generator)[: config.batch_size]
        used = int(attention_mask[rows].sum(dim=1).max())
        answers = labels[rows, :used].to(device)
        kept = supervised_positions(answers)  # the head runs where the cross-entropy reads it only
        deltas = hypernets(plan.teacher_vectors)
        weights = injected_weights(student, plan, deltas)
        with compute_precision(device, config.dtype):
            logits = torch.func.functional_call(
                student,
                weights,
                args=(),
                kwargs={
                    "input_ids": input_ids[rows, :used].to(device),
                    "attention_mask": attention_mask[rows, :used].to(device),
                    "use_cache": False,
                    "logits_to_keep": kept,
                },
            ).logits
        lm_loss = cross_entropy_loss(*kept_pairs(logits, answers, kept))
        penalty = config.penalty * torch.cat([d.flatten() for d in deltas.values()]).pow(2).mean()
        loss = lm_loss + penalty
        if not torch.isfinite(loss):
            raise SemalignError(f"laten step {step}: loss is {loss.item()}; lower laten.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        records.append(
            {"step": step, "loss": loss.item(), "lm_loss": lm_loss.item(), "penalty": penalty.item()}
        )
    return records


@torch.no_grad()
def neuron_delta(student: PreTrainedModel, hypernets: Hypernetworks, plan: Plan) -> dict[str, torch.Tensor]:
    """The injection as a student delta: {key: ΔW}, the mapped deltas at the receivers and zero elsewhere."""
    deltas = hypernets(plan.teacher_vectors)
    linears = target_linears(student, tuple(sorted({kind for _, kind in deltas})))
    keys = weight_keys(student, linears)
    return {
        keys[site]: inject_neurons(
            torch.zeros_like(linears[site].weight), plan.receivers[site], delta, site[1]
        )
        for site, delta in deltas.items()
    }


@dataclass
class LatenRun:
    """What `run_laten` made: the student delta and its description (for `save_delta`), the teacher's layer
    scores (a plot, layer 1..L) and the metrics."""

    delta: dict[str, torch.Tensor]
    description: dict
    scores: list[float]
    metrics: dict


def run_laten(student_dir: Path, teacher_dir: Path, data_dir: Path, config: LatenConfig) -> LatenRun:
    """LaTen from the model directories and a task's folder of splits: static attribution of both models on
    the attribution split, hypernetworks trained on it, one injection."""
    encoded, _ = load_split(data_dir, "attribution")
    examples = (encoded.input_ids, encoded.attention_mask, encoded.labels)

    student, _ = load_hf_dir(student_dir)
    student.requires_grad_(False)
    student_scores = attribute(student, *examples)
    widths = {
        kind: neuron_width(m.weight, kind)
        for (ell, kind), m in target_linears(student, config.target_modules).items()
        if ell == 1
    }

    teacher, _ = load_hf_dir(teacher_dir)
    teacher.requires_grad_(False)
    teacher_scores = attribute(teacher, *examples)
    plan = plan_transfer(teacher, teacher_scores, student_scores, widths, config)
    d_teacher = model_info(teacher).d_model
    del teacher
    gc.collect()

    d_student = model_info(student).d_model
    hypernets = Hypernetworks(config.target_modules, d_teacher, d_student, config.init_std, config.seed)
    records = train_hypernetworks(student, hypernets, plan, *examples, config)
    delta = neuron_delta(student, hypernets, plan)
    received = sum(len(idx) for idx in plan.receivers.values()) * d_student
    return LatenRun(
        delta=delta,
        description={
            "method": "laten",
            "teacher_layers": plan.teacher_layers,
            "receivers": {f"{j}.{kind}": idx.tolist() for (j, kind), idx in plan.receivers.items()},
        },
        scores=[teacher_scores.layers[ell] for ell in sorted(teacher_scores.layers)],
        metrics={
            "teacher_layers": plan.teacher_layers,
            "teacher_layer_gain": {str(ell): v for ell, v in teacher_scores.layers.items()},
            "student_layer_gain": {str(ell): v for ell, v in student_scores.layers.items()},
            "neurons_per_module": {kind: len(plan.receivers[(1, kind)]) for kind in config.target_modules},
            "delta_rms_on_receivers": (sum(float(d.double().pow(2).sum()) for d in delta.values()) / received)
            ** 0.5,
            "steps": records,
        },
    )
