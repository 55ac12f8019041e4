"""SEEKING: sensitivities by hand, layer choice, the summed-area block search against brute force, an
output-preserving LoRA init, and a saved delta that reproduces the post-aligned model."""

import itertools

import pytest
import torch

from semalign.baselines.delta import apply_delta, load_delta, save_delta, target_linears, weight_keys
from semalign.baselines.seeking import (
    SeekingConfig,
    best_block,
    extract_blocks,
    inject,
    layer_totals,
    lora_delta,
    lora_factors,
    select_layers,
    sensitivity,
)
from semalign.errors import SemalignError
from semalign.student.objectives import cross_entropy_loss
from semalign.student.training import add_lora, step_batches, steps_per_epoch, train
from semalign.testing import tiny_model

KINDS = ("up_proj", "down_proj", "v_proj", "o_proj")


def seed_set(n: int = 3, t: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 300, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, -2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100
    return ids, mask, labels


def teacher():
    return tiny_model("qwen2", seed=3, num_layers=4, hidden_size=48)


def student():
    return tiny_model("qwen2", seed=4, num_layers=3, hidden_size=32, intermediate_size=64)


def test_sensitivity_is_the_per_example_sum_of_abs_weight_times_gradient():
    model, (ids, mask, labels) = teacher(), seed_set()
    got = sensitivity(model, ids, mask, labels, KINDS)
    assert all(not p.requires_grad for p in model.parameters())
    linears = target_linears(model, KINDS)
    expected = {site: torch.zeros_like(m.weight, dtype=torch.float64) for site, m in linears.items()}
    reference = model.double()
    for row in range(len(ids)):
        used = int(mask[row].sum())  # the padding is on the right and masked: cutting it changes nothing
        reference.zero_grad()
        reference.requires_grad_(True)
        logits = reference(input_ids=ids[row : row + 1], attention_mask=mask[row : row + 1]).logits
        cross_entropy_loss(logits[:, :used], labels[row : row + 1, :used]).backward()
        for site, m in linears.items():
            expected[site] += (m.weight.detach() * m.weight.grad).abs()
    assert set(got) == {(ell, kind) for ell in range(1, 5) for kind in KINDS}
    for site in got:
        torch.testing.assert_close(got[site].double(), expected[site], rtol=2e-4, atol=1e-9)


def test_sensitivity_holds_one_weight_gradient_at_a_time():
    """Each gradient is folded into S and freed as backward produces it: while a weight's gradient
    exists, no other target weight holds one (the 1.5B teacher's full set was 3.4 GB)."""
    model, (ids, mask, labels) = teacher(), seed_set()
    weights = [m.weight for m in target_linears(model, KINDS).values()]
    alive = []
    for weight in weights:  # observers registered first run first, before the fold
        weight.requires_grad_(True)
        weight.register_post_accumulate_grad_hook(
            lambda _: alive.append(sum(w.grad is not None for w in weights))
        )
    sensitivity(model, ids, mask, labels, KINDS)
    assert len(alive) == len(weights) * len(ids) and set(alive) == {1}
    assert all(w.grad is None for w in weights)


def test_layers_are_the_top_totals_in_depth_order():
    scores = {
        (ell, kind): torch.full((2, 2), float(v))
        for ell, v in zip(range(1, 6), [5, 1, 9, 3, 7])
        for kind in ("up_proj",)
    }
    totals = layer_totals(scores)
    assert totals == {1: 20.0, 2: 4.0, 3: 36.0, 4: 12.0, 5: 28.0}
    assert select_layers(totals, 3) == [1, 3, 5]
    assert select_layers(totals, 1) == [3]
    with pytest.raises(SemalignError, match="num_layers"):
        select_layers(totals, 6)


def test_an_unknown_precision_is_refused_by_its_key():
    with pytest.raises(
        SemalignError, match=r"^seeking.dtype is 'float16'; use one of \['float32', 'bfloat16'\]$"
    ):
        SeekingConfig(dtype="float16")


@pytest.mark.parametrize(
    "shape,block", [((7, 9), (3, 4)), ((5, 5), (5, 5)), ((6, 4), (1, 1)), ((8, 3), (2, 3))]
)
def test_block_search_finds_the_brute_force_maximum(shape, block):
    g = torch.Generator().manual_seed(sum(shape) + sum(block))
    for _ in range(5):
        scores = torch.rand(shape, generator=g) ** 4  # skewed, like sensitivities
        n, m = block
        brute = max(
            (
                (float(scores[i : i + n, j : j + m].double().sum()), i, j)
                for i, j in itertools.product(range(shape[0] - n + 1), range(shape[1] - m + 1))
            )
        )
        i, j, total = best_block(scores, n, m)
        assert (i, j) == brute[1:]
        assert total == pytest.approx(brute[0], rel=1e-12)


def test_block_larger_than_the_teacher_matrix_is_refused():
    with pytest.raises(SemalignError, match="does not fit"):
        best_block(torch.rand(4, 4), 5, 2)


@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (9, 9)])
def test_lora_factors_are_the_best_rank_r_approximation(shape):
    block = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    b, a = lora_factors(block, 3)
    assert b.shape == (shape[0], 3) and a.shape == (3, shape[1])
    s = torch.linalg.svdvals(block.double())
    assert torch.linalg.norm(block.double() - (b @ a).double()) ** 2 == pytest.approx(
        float((s[3:] ** 2).sum()), rel=1e-5
    )
    torch.testing.assert_close(torch.linalg.norm(b.double(), dim=0), s[:3], rtol=1e-6, atol=0)  # B = U_r Σ_r
    torch.testing.assert_close(
        a.double() @ a.double().T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)])
def test_lora_factors_of_a_rank_deficient_block_are_finite_and_exact(shape):
    g = torch.Generator().manual_seed(1)
    block = torch.randn(shape[0], 2, generator=g) @ torch.randn(2, shape[1], generator=g)  # rank 2 < r = 3
    b, a = lora_factors(block, 3)
    assert torch.isfinite(b).all() and torch.isfinite(a).all()
    torch.testing.assert_close(b @ a, block, atol=1e-5, rtol=0)


def blocks_for(student_model, config, directory):
    """Blocks as run_seeking finds them: sensitivities on the model, weights read from its saved directory
    (sharded: every weight in a file of its own)."""
    t, (ids, mask, labels) = teacher(), seed_set()
    t.save_pretrained(directory / "teacher", max_shard_size="20KB")
    assert (directory / "teacher" / "model.safetensors.index.json").is_file()
    scores = sensitivity(t, ids, mask, labels, config.target_modules)
    layers = select_layers(layer_totals(scores), 3)
    shapes = {
        kind: tuple(m.weight.shape)
        for (ell, kind), m in target_linears(student_model, config.target_modules).items()
        if ell == 1
    }
    keys = weight_keys(t, target_linears(t, config.target_modules))
    return extract_blocks(directory / "teacher", keys, scores, layers, shapes), layers, scores


def test_blocks_are_the_teacher_weights_at_the_most_sensitive_position(tmp_path):
    config = SeekingConfig(lora_r=4)
    s = student()
    blocks, layers, scores = blocks_for(s, config, tmp_path)
    t_linears = target_linears(teacher(), KINDS)
    assert set(blocks) == {(j, kind) for j in (1, 2, 3) for kind in KINDS}
    for (j, kind), block in blocks.items():
        assert block.teacher_layer == layers[j - 1]
        n, m = block.weight.shape
        assert (n, m) == tuple(target_linears(s, KINDS)[(j, kind)].weight.shape)
        assert (block.row, block.col, pytest.approx(block.sensitivity)) == best_block(
            scores[(block.teacher_layer, kind)], n, m
        )
        torch.testing.assert_close(
            block.weight,
            t_linears[(block.teacher_layer, kind)].weight[
                block.row : block.row + n, block.col : block.col + m
            ],
            rtol=0,
            atol=0,
        )


def injected_student(config, directory):
    s = student()
    blocks, _, _ = blocks_for(s, config, directory)
    factors = {site: lora_factors(b.weight, config.lora_r) for site, b in blocks.items()}
    model = add_lora(s, [1, 2, 3], config.train_config())
    inject(model, factors)
    return model, factors


def test_injection_leaves_the_outputs_unchanged_and_puts_the_block_in_the_adapter(tmp_path):
    config = SeekingConfig(lora_r=4)
    ids, mask, _ = seed_set(seed=5)
    with torch.no_grad():
        before = student()(input_ids=ids, attention_mask=mask).logits
    model, factors = injected_student(config, tmp_path)
    model.eval()
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    up = model.get_base_model().model.layers[0].mlp.up_proj
    b, a = factors[(1, "up_proj")]
    adapter = up.scaling["default"] * up.lora_B["default"].weight @ up.lora_A["default"].weight
    torch.testing.assert_close(adapter, b @ a, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(up.base_layer.weight, student().model.layers[0].mlp.up_proj.weight)


def test_saved_delta_reproduces_the_post_aligned_model(tmp_path):
    config = SeekingConfig(lora_r=4, lr=1e-2, epochs=2, batch_size=2, micro_batch_size=1, lora_dropout=0.0)
    model, factors = injected_student(config, tmp_path)
    ids, mask, labels = seed_set(n=4, seed=6)
    tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    train_config = config.train_config()
    train(
        model,
        lambda e: step_batches(tensors, {}, train_config, torch.Generator().manual_seed(e)),
        [1, 2, 3],
        train_config,
        steps_per_epoch(4, train_config),
    )
    delta = lora_delta(model, factors)
    assert "model.layers.0.mlp.up_proj.weight" in delta and len(delta) == 12
    save_delta(delta, tmp_path, {"method": "seeking"})
    rebuilt = apply_delta(student().double(), {k: v.double() for k, v in load_delta(tmp_path).items()})
    with torch.no_grad():
        expected = model.double()(input_ids=ids, attention_mask=mask).logits
        got = rebuilt(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(got, student().double()(input_ids=ids, attention_mask=mask).logits, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
