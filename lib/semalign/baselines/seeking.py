"""SEEKING (Zhong et al., ICLR 2024): extract sensitive teacher parameters, inject them as a LoRA init,
post-align.

1. Sensitivity of each teacher weight on a seed set: S = Σ_examples |θ ⊙ ∂L/∂θ|, L the answer-token
   cross-entropy, one example per backward, only for the target modules (up/down/v/o).
2. Layers: sum S per decoder layer, keep the top L_S (default: the student's depth) in depth order;
   teacher layer j of that list feeds student layer j.
3. Width: in each selected matrix [n_T, m_T], the contiguous [n_S, m_S] block (the student's shape) of
   largest total sensitivity, found with a summed-area table over all block positions at once.
4. Injection: SVD of the block, rank r: B = U_r Σ_r, A = V_rᵀ. PEFT's adapter adds s·B'A with
   s = lora_alpha / r, so lora_B = B / s and the adapter's product is the rank-r block itself; the base
   weight becomes W − B A, so the student's outputs are unchanged at step 0.
5. Post-alignment: LoRA fine-tuning with cross-entropy (`semalign.student.training`, objective "sft").
The result is saved as a student delta ΔW = s·(B A − B₀ A₀) per module, which is exactly the change of
the merged weight (W − s B₀ A₀ + s B A).

Deviations from the paper, and why: the seed set uses the gold answers of the attribution split instead
of answers decoded by the teacher (the split is teacher-side and never evaluated, and decoding 32 answers
with the teacher costs minutes on a CPU for no change in what is measured: which weights matter for the
task's answers); the LoRA placement and r follow this project's protocol (r 16 on up/down/v/o), as in
the SemAlign paper's comparison.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from semalign.baselines.delta import target_linears, weight_keys
from semalign.config import at_least, between, positive
from semalign.data import load_split
from semalign.errors import SemalignError
from semalign.models import MODEL_DTYPES, check_precision, decoder_layers, load_hf_dir, read_weight_blocks
from semalign.progress import progress
from semalign.student.objectives import cross_entropy_loss
from semalign.student.training import (
    TrainConfig,
    add_lora,
    step_batches,
    steps_per_epoch,
    token_tensors,
    train,
)

Site = tuple[int, str]  # (layer ℓ = 1..L, module kind)


@dataclass(frozen=True)
class SeekingConfig:
    """`seeking` section. num_layers: L_S teacher layers kept (null: the student's depth). The LoRA and
    optimiser keys are those of `train` and mean the same (post-alignment is cross-entropy fine-tuning);
    dtype is also the precision of the teacher's sensitivity passes."""

    num_layers: int | None = positive(None)
    target_modules: tuple[str, ...] = ("up_proj", "down_proj", "v_proj", "o_proj")
    lora_r: int = positive(16)
    lora_alpha: int = positive(32)
    lora_dropout: float = between(0.05, 0, 1, high_inclusive=False)
    lr: float = positive(3e-4)
    epochs: int = positive(2)
    batch_size: int = positive(16)
    micro_batch_size: int = positive(4)
    seed: int = at_least(0, 0)
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        check_precision("seeking.dtype", self.dtype)
        if self.num_layers is not None and (isinstance(self.num_layers, bool) or self.num_layers < 1):
            raise SemalignError(f"seeking.num_layers {self.num_layers!r} must be a positive integer or null")

    def train_config(self) -> TrainConfig:
        """The post-alignment run: cross-entropy on the training split with these LoRA settings."""
        return TrainConfig(
            objective="sft",
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            lr=self.lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            micro_batch_size=self.micro_batch_size,
            seed=self.seed,
            dtype=self.dtype,
        )


@dataclass
class Block:
    """The extracted sub-block of one teacher matrix: weight `[n_S, m_S]` at (row, col) of teacher layer
    `teacher_layer`, with its total sensitivity and that total's share of the whole matrix's."""

    weight: torch.Tensor
    teacher_layer: int
    row: int
    col: int
    sensitivity: float
    share: float


def sensitivity(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    target_modules: tuple[str, ...],
) -> dict[Site, torch.Tensor]:
    """S = Σ_examples |θ ⊙ ∂L/∂θ| for the target modules' weights, `{site: [out, in]}`, float32.

    input_ids, attention_mask, labels: `[N, T]`, right-padded, labels −100 off the answer tokens. One
    example per backward (each cut to its real length); only the target weights get gradients. Each
    gradient is folded into S by a post-accumulate-grad hook the moment backward has produced it, and
    freed there, so memory is the model + S + one weight's gradient (not the gradients of every target
    weight at once: 3.4 GB for the 1.5B teacher, which made this stage the default's memory peak).
    """
    linears = target_linears(model, target_modules)
    model.requires_grad_(False)
    totals = {site: torch.zeros_like(module.weight, dtype=torch.float32) for site, module in linears.items()}

    def fold_into(total: torch.Tensor):
        def hook(weight: torch.Tensor) -> None:
            total.add_(weight.grad.float().mul_(weight.detach()).abs_())
            weight.grad = None

        return hook

    handles = []
    for site, module in linears.items():
        module.weight.requires_grad_(True)
        handles.append(module.weight.register_post_accumulate_grad_hook(fold_into(totals[site])))
    device = next(model.parameters()).device
    try:
        for row in progress(range(len(input_ids)), desc="seeking: sensitivity", unit="example"):
            used = int(attention_mask[row].sum())
            if not (labels[row, 1:used] != -100).any():
                raise SemalignError(f"seed example {row} has no answer token; check data.max_length")
            logits = model(
                input_ids=input_ids[row : row + 1, :used].to(device),
                attention_mask=attention_mask[row : row + 1, :used].to(device),
                use_cache=False,
            ).logits
            cross_entropy_loss(logits, labels[row : row + 1, :used].to(device)).backward()
    finally:
        for handle in handles:
            handle.remove()
        model.requires_grad_(False)
    return totals


def layer_totals(scores: dict[Site, torch.Tensor]) -> dict[int, float]:
    """Summed sensitivity per layer ℓ."""
    totals: dict[int, float] = {}
    for (ell, _), s in scores.items():
        totals[ell] = totals.get(ell, 0.0) + float(s.double().sum())
    return dict(sorted(totals.items()))


def select_layers(totals: dict[int, float], count: int) -> list[int]:
    """The `count` layers of largest total, in depth order."""
    if not 1 <= count <= len(totals):
        raise SemalignError(
            f"num_layers {count} must be between 1 and the teacher's {len(totals)} layers (and at "
            "most the student's depth); fix seeking.num_layers or laten.num_layers"
        )
    ranked = sorted(totals, key=lambda ell: -totals[ell])
    return sorted(ranked[:count])


def best_block(scores: torch.Tensor, n: int, m: int) -> tuple[int, int, float]:
    """(row, col, total) of the contiguous `[n, m]` block of `scores` `[N, M]` with the largest sum.

    Summed-area table P (zero-padded, float64): block sum at (i, j) = P[i+n, j+m] − P[i, j+m] − P[i+n, j]
    + P[i, j], evaluated for all (N−n+1)×(M−m+1) positions as four shifted slices.
    """
    rows, cols = scores.shape
    if not (1 <= n <= rows and 1 <= m <= cols):
        raise SemalignError(
            f"a [{n}, {m}] student block does not fit a [{rows}, {cols}] teacher matrix; SEEKING "
            "needs a teacher at least as wide as the student in every target module"
        )
    table = torch.zeros(rows + 1, cols + 1, dtype=torch.float64)
    table[1:, 1:] = scores.double().cumsum(0).cumsum(1)
    sums = table[n:, m:] - table[:-n, m:] - table[n:, :-m] + table[:-n, :-m]  # [N−n+1, M−m+1]
    flat = int(sums.argmax())
    i, j = divmod(flat, sums.shape[1])
    return i, j, float(sums[i, j])


def extract_blocks(
    teacher_dir: Path,
    keys: dict[Site, str],
    scores: dict[Site, torch.Tensor],
    teacher_layers: list[int],
    shapes: dict[str, tuple[int, int]],
) -> dict[Site, Block]:
    """For student layer j = 1..len(teacher_layers) and each kind in `shapes` ({kind: (n_S, m_S)}), the most
    sensitive `[n_S, m_S]` block of teacher layer teacher_layers[j−1]'s matrix of that kind, read as stored
    (float32) from the teacher's directory; `keys` names each site's weight there."""
    found = {}
    for j, ell in enumerate(teacher_layers, start=1):
        for kind, (n, m) in shapes.items():
            row, col, total = best_block(scores[(ell, kind)], n, m)
            matrix_total = float(scores[(ell, kind)].double().sum())
            found[(j, kind)] = (ell, row, col, total, total / matrix_total if matrix_total > 0 else 0.0)
    weights = read_weight_blocks(
        teacher_dir,
        {
            keys[(ell, kind)]: (slice(row, row + shapes[kind][0]), slice(col, col + shapes[kind][1]))
            for (_, kind), (ell, row, col, _, _) in found.items()
        },
    )
    return {
        (j, kind): Block(weights[keys[(ell, kind)]], ell, row, col, total, share)
        for (j, kind), (ell, row, col, total, share) in found.items()
    }


def lora_factors(block: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r SVD factors of `block` `[n, m]`: B = U_r Σ_r `[n, r]`, A = V_rᵀ `[r, m]` (float32).

    From the eigenvectors of the smaller Gram matrix in float64 (XᵀX = V Σ² Vᵀ: B = X V_r, or XXᵀ = U Σ² Uᵀ:
    A = Σ_r⁻¹ U_rᵀ X), a quarter of a full SVD's time on a [4864, 896] block; squaring the condition costs
    the top r singular values nothing at float64's precision.
    """
    if rank > min(block.shape):
        raise SemalignError(
            f"seeking.lora_r {rank} exceeds the block's rank bound {min(block.shape)}; lower it"
        )
    x = block.double()
    tall = x.shape[0] >= x.shape[1]
    _, vectors = torch.linalg.eigh(x.T @ x if tall else x @ x.T)  # eigenvalues ascending
    top = vectors[:, -rank:].flip(1)
    if tall:
        return (x @ top).float(), top.T.float()
    projected = top.T @ x  # Σ_r V_rᵀ `[r, m]`: its row norms are the σ_i
    sigma = projected.norm(dim=1).clamp(min=torch.finfo(torch.float64).tiny)
    return (top * sigma).float(), (projected / sigma[:, None]).float()


def _lora_module(model: PeftModel, site: Site):
    ell, kind = site
    for path, module in decoder_layers(model.get_base_model())[ell - 1].named_modules():
        if path.rsplit(".", 1)[-1] == kind and hasattr(module, "lora_A"):
            return module
    raise SemalignError(f"student layer {ell} has no LoRA on {kind}; add_lora must cover the blocks' layers")


@torch.no_grad()
def inject(model: PeftModel, factors: dict[Site, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set each site's LoRA to (B / s, A) and its base weight to W − B A: outputs unchanged, adapter = B A."""
    for site, (b, a) in factors.items():
        module = _lora_module(model, site)
        scale = module.scaling["default"]
        module.lora_A["default"].weight.copy_(a)
        module.lora_B["default"].weight.copy_(b / scale)
        module.base_layer.weight.sub_((b @ a).to(module.base_layer.weight.dtype))


@torch.no_grad()
def lora_delta(
    model: PeftModel, initial: dict[Site, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """{student state-dict key: s·(B A − B₀ A₀)} from the trained adapters and the injected `initial` (B,
    A)."""
    base = model.get_base_model()
    keys = weight_keys(base, {site: _lora_module(model, site).base_layer for site in initial})
    delta = {}
    for site, (b0, a0) in initial.items():
        module = _lora_module(model, site)
        scale = module.scaling["default"]
        trained = module.lora_B["default"].weight.double() @ module.lora_A["default"].weight.double()
        delta[keys[site].replace(".base_layer.weight", ".weight")] = (
            scale * trained - b0.double() @ a0.double()
        ).float()
    return delta


@dataclass
class SeekingRun:
    """What `run_seeking` made: the student delta and its description (for `save_delta`), each teacher
    layer's share of the sensitivity (a plot, layer 1..L) and the metrics."""

    delta: dict[str, torch.Tensor]
    description: dict
    shares: list[float]
    metrics: dict


def run_seeking(student_dir: Path, teacher_dir: Path, data_dir: Path, config: SeekingConfig) -> SeekingRun:
    """SEEKING from the model directories and a task's folder of splits: sensitivities on the attribution
    split, blocks of the top teacher layers as the student's LoRA init, post-alignment on the training
    split."""
    # Only the student's shapes are needed before the teacher: load it, read them, free it.
    student, _ = load_hf_dir(student_dir)
    student_linears = target_linears(student, config.target_modules)
    shapes = {kind: tuple(m.weight.shape) for (ell, kind), m in student_linears.items() if ell == 1}
    student_depth = max(ell for ell, _ in student_linears)
    del student, student_linears

    seed, _ = load_split(data_dir, "attribution")
    # In bfloat16 the teacher takes half the memory and its passes run on AMX; the blocks are read as stored
    # (float32) either way. Its effect on the real teacher's choices: docs/measurements.md.
    teacher, _ = load_hf_dir(teacher_dir, dtype=MODEL_DTYPES[config.dtype])
    scores = sensitivity(teacher, seed.input_ids, seed.attention_mask, seed.labels, config.target_modules)
    keys = weight_keys(teacher, target_linears(teacher, config.target_modules))
    del teacher
    gc.collect()
    totals = layer_totals(scores)
    layers = select_layers(totals, config.num_layers or student_depth)
    blocks = extract_blocks(teacher_dir, keys, scores, layers, shapes)
    del scores

    factors = {site: lora_factors(block.weight, config.lora_r) for site, block in blocks.items()}
    student, _ = load_hf_dir(student_dir)
    train_config = config.train_config()
    model = add_lora(student, list(range(1, len(layers) + 1)), train_config)
    inject(model, factors)
    encoded, _ = load_split(data_dir, "training")
    tensors = token_tensors(encoded)

    def epoch_steps(epoch: int):
        return step_batches(tensors, {}, train_config, torch.Generator().manual_seed(config.seed + epoch))

    torch.manual_seed(config.seed)  # LoRA dropout masks follow seeking.seed, not whatever ran before
    records = train(
        model,
        epoch_steps,
        list(range(1, len(layers) + 1)),
        train_config,
        steps_per_epoch(len(encoded.input_ids), train_config),
    ).records
    total = sum(totals.values())
    return SeekingRun(
        delta=lora_delta(model, factors),
        description={
            "method": "seeking",
            "teacher_layers": layers,
            "lora_r": config.lora_r,
            "blocks": {
                f"{j}.{kind}": {"teacher_layer": b.teacher_layer, "row": b.row, "col": b.col}
                for (j, kind), b in blocks.items()
            },
        },
        shares=[totals[ell] / total for ell in sorted(totals)],
        metrics={
            "teacher_layers": layers,
            "layer_sensitivity": {str(ell): v for ell, v in totals.items()},
            "kept_share": sum(totals[ell] for ell in layers) / total,
            # how much of each selected matrix's sensitivity its student-sized block holds, mean over layers
            "block_share_mean": {
                kind: sum(b.share for (_, k), b in blocks.items() if k == kind) / len(layers)
                for kind in shapes
            },
            "steps": len(records),
            "first_loss": records[0]["loss"] if records else None,
            "final_loss": records[-1]["loss"] if records else None,
        },
    )
