"""LaTen: static layer and neuron scores against hand computations, hypernetwork shapes, an injection that
touches exactly the receiver neurons, and alignment training that lowers the injected student's loss."""

import pytest
import torch
from test_seeking import seed_set as examples

from semalign.baselines.delta import apply_delta, target_linears
from semalign.baselines.laten import (
    KINDS,
    Hypernetworks,
    LatenConfig,
    attribute,
    inject_neurons,
    neuron_delta,
    neuron_width,
    plan_transfer,
    train_hypernetworks,
)
from semalign.errors import SemalignError
from semalign.testing import tiny_model

T_LAYERS, S_LAYERS, D_T, D_S = 4, 3, 48, 32


def teacher():
    return tiny_model("qwen2", seed=3, num_layers=T_LAYERS, hidden_size=D_T)


def student():
    return tiny_model("qwen2", seed=4, num_layers=S_LAYERS, hidden_size=D_S, intermediate_size=64)


def lp_of(model, logits_or_h, y, normed):
    logits = logits_or_h if normed else model.lm_head(model.model.norm(logits_or_h))
    return torch.log_softmax(logits, -1).gather(-1, y[:, None]).squeeze(-1)


def test_layer_score_is_the_answer_logprob_gain_of_the_layer_update():
    model, (ids, mask, labels) = teacher(), examples()
    scores = attribute(model, ids, mask, labels)
    reference = teacher().double()
    expected = torch.zeros(T_LAYERS, dtype=torch.float64)
    with torch.no_grad():
        for row in range(len(ids)):
            used = int(mask[row].sum())
            out = reference(input_ids=ids[row : row + 1, :used], output_hidden_states=True)
            pos = (labels[row, 1:used] != -100).nonzero()[:, 0]
            y = labels[row, pos + 1]
            # hidden_states[L] is final-normed in transformers: lp(h_L) comes from the logits instead
            lps = [lp_of(reference, out.hidden_states[ell][0, pos], y, False) for ell in range(T_LAYERS)]
            lps.append(lp_of(reference, out.logits[0, pos], y, True))
            expected += torch.stack([(lps[ell] - lps[ell - 1]).mean() for ell in range(1, T_LAYERS + 1)])
    got = torch.tensor([scores.layers[ell] for ell in range(1, T_LAYERS + 1)], dtype=torch.float64)
    torch.testing.assert_close(got, expected / len(ids), rtol=1e-4, atol=1e-5)


def test_ffn_and_o_scores_are_first_order_gains_and_v_sums_its_query_heads():
    model, (ids, mask, labels) = teacher(), examples(n=1)
    scores = attribute(model, ids, mask, labels)
    reference, ell = teacher().double(), 2
    layer = reference.model.layers[ell - 1]
    caught = {}
    layer.mlp.down_proj.register_forward_hook(lambda m, i, o: caught.update(act=i[0], ffn=o))
    layer.self_attn.o_proj.register_forward_hook(lambda m, i, o: caught.update(z=i[0], attn=o))
    layer.register_forward_pre_hook(
        lambda m, args, kwargs: caught.update(h_in=(args[0] if args else kwargs["hidden_states"])),
        with_kwargs=True,
    )
    with torch.no_grad():
        reference(input_ids=ids, attention_mask=mask)
    pos = (labels[0, 1:] != -100).nonzero()[:, 0]
    y = labels[0, pos + 1]
    h_in, z, act = caught["h_in"][0, pos], caught["z"][0, pos], caught["act"][0, pos]
    h_mid = h_in + caught["attn"][0, pos]
    # d/dε of lp(h + Σ_i ε_i x_i W[:, i]) at ε = 0: each neuron's first-order gain, by autograd on ε
    eps_f = torch.zeros(act.shape[1], dtype=torch.float64, requires_grad=True)
    lp_of(reference, h_mid + (act * eps_f) @ layer.mlp.down_proj.weight.T, y, False).sum().backward()
    eps_o = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    lp_of(reference, h_in + (z * eps_o) @ layer.self_attn.o_proj.weight.T, y, False).sum().backward()
    torch.testing.assert_close(scores.neurons[(ell, "down_proj")], eps_f.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(scores.neurons[(ell, "up_proj")], eps_f.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(scores.neurons[(ell, "o_proj")], eps_o.grad, rtol=1e-3, atol=1e-6)
    heads, hd = 4, D_T // 4  # 2 kv heads: query heads 0, 1 read kv head 0; heads 2, 3 read kv head 1
    o = eps_o.grad.view(heads, hd)
    torch.testing.assert_close(
        scores.neurons[(ell, "v_proj")], torch.cat([o[0] + o[1], o[2] + o[3]]), rtol=1e-3, atol=1e-6
    )


def planned(config):
    t, s, (ids, mask, labels) = teacher(), student(), examples()
    widths = {
        kind: neuron_width(m.weight, kind) for (ell, kind), m in target_linears(s, KINDS).items() if ell == 1
    }
    t_scores, s_scores = attribute(t, ids, mask, labels), attribute(s, ids, mask, labels)
    return t, s, plan_transfer(t, t_scores, s_scores, widths, config), t_scores, s_scores


def test_plan_maps_top_teacher_layers_and_rank_matched_neurons():
    config = LatenConfig(neuron_fraction=0.25)
    t, s, plan, t_scores, s_scores = planned(config)
    ranked = sorted(t_scores.layers, key=lambda ell: -t_scores.layers[ell])
    assert plan.teacher_layers == sorted(ranked[:S_LAYERS])
    up = target_linears(t, KINDS)[(plan.teacher_layers[0], "up_proj")].weight
    k = round(0.25 * 64)
    top = t_scores.neurons[(plan.teacher_layers[0], "up_proj")].topk(k).indices
    torch.testing.assert_close(plan.teacher_vectors[(1, "up_proj")], up[top])
    assert (
        plan.receivers[(1, "up_proj")].tolist() == s_scores.neurons[(1, "up_proj")].topk(k).indices.tolist()
    )
    assert len(plan.receivers[(2, "v_proj")]) == round(0.25 * 16)  # student v_proj: 2 kv heads × 8


def test_hypernetwork_outputs_have_the_student_module_shapes():
    config = LatenConfig(neuron_fraction=0.25)
    _, s, plan, _, _ = planned(config)
    deltas = Hypernetworks(KINDS, D_T, D_S, init_std=0.1)(plan.teacher_vectors)
    linears = target_linears(s, KINDS)
    for (j, kind), delta in deltas.items():
        assert delta.shape == (len(plan.receivers[(j, kind)]), D_S)
        assert (
            inject_neurons(linears[(j, kind)].weight, plan.receivers[(j, kind)], delta, kind).shape
            == linears[(j, kind)].weight.shape
        )


def test_injection_changes_exactly_the_receiver_neurons():
    config = LatenConfig(neuron_fraction=0.25)
    _, s, plan, _, _ = planned(config)
    hypernets = Hypernetworks(KINDS, D_T, D_S, init_std=0.1)
    delta = neuron_delta(s, hypernets, plan)
    before = {k: v.clone() for k, v in s.state_dict().items()}
    apply_delta(s, delta)
    after = s.state_dict()
    changed_keys = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed_keys == set(delta) and len(delta) == S_LAYERS * 4
    for (j, kind), receivers in plan.receivers.items():
        key = (
            f"model.layers.{j - 1}.{'mlp' if kind in ('up_proj', 'down_proj') else 'self_attn'}.{kind}.weight"
        )
        diff = after[key] - before[key]
        touched = (diff != 0).any(dim=1 if kind in ("up_proj", "v_proj") else 0).nonzero()[:, 0]
        assert sorted(touched.tolist()) == sorted(receivers.tolist()), (j, kind)


def test_near_zero_init_starts_at_the_student_and_training_lowers_the_loss():
    config = LatenConfig(neuron_fraction=0.5, steps=12, batch_size=3, lr=3e-3, penalty=0.0, init_std=1e-6)
    _, s, plan, _, _ = planned(config)
    ids, mask, labels = examples()
    hypernets = Hypernetworks(KINDS, D_T, D_S, init_std=config.init_std)
    start = apply_delta(student(), neuron_delta(s, hypernets, plan))
    with torch.no_grad():
        torch.testing.assert_close(
            start(input_ids=ids, attention_mask=mask).logits,
            s(input_ids=ids, attention_mask=mask).logits,
            rtol=1e-4,
            atol=1e-4,
        )
    records = train_hypernetworks(s, hypernets, plan, ids, mask, labels, config)
    assert len(records) == 12
    assert records[-1]["lm_loss"] < records[0]["lm_loss"] - 0.05
    assert all(not p.requires_grad for p in s.parameters())


def test_penalty_is_the_weighted_mean_square_of_the_deltas():
    config = LatenConfig(neuron_fraction=0.25, steps=1, batch_size=3, lr=0.0, penalty=1000.0)
    _, s, plan, _, _ = planned(config)
    hypernets = Hypernetworks(KINDS, D_T, D_S, init_std=0.05)
    with torch.no_grad():
        deltas = hypernets(plan.teacher_vectors)
    expected = 1000.0 * float(torch.cat([d.flatten() for d in deltas.values()]).double().pow(2).mean())
    record = train_hypernetworks(s, hypernets, plan, *examples(), config)[0]
    assert record["penalty"] == pytest.approx(expected, rel=1e-5)
    assert record["loss"] == pytest.approx(record["lm_loss"] + record["penalty"], rel=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(SemalignError, match="neuron_fraction"):
        LatenConfig(neuron_fraction=0.0)
    with pytest.raises(SemalignError, match="q_proj"):
        LatenConfig(target_modules=("q_proj",))
    with pytest.raises(
        SemalignError, match=r"^laten.dtype is 'float16'; use one of \['float32', 'bfloat16'\]$"
    ):
        LatenConfig(dtype="float16")
