"""Layer pairing: the paper's depth map, k†, interpolation, the v2 monotone DP, and the pairing file."""

import itertools
import json
import random

import pytest

from semalign.align.pairing import (
    Interp,
    PairConfig,
    Pairing,
    build_pairing,
    build_pairings,
    depth_map,
    frontier_run,
    interpolation,
    monotone_selection,
    nearest_student_layer,
    read_pairings,
    top_critical,
)
from semalign.errors import SemalignError


def test_paper_example_20_to_10_is_twice_k():
    assert depth_map(20, 10) == [2 * k for k in range(1, 11)]


def test_depth_map_28_to_24_and_7_to_3_by_hand():
    # floor(28k/24) = floor(7k/6): k=1..5 → 1..5, k=6 → 7, k=12 → 14, k=24 → 28.
    mapped = depth_map(28, 24)
    assert mapped[:6] == [1, 2, 3, 4, 5, 7]
    assert (mapped[11], mapped[12], mapped[23]) == (14, 15, 28)
    assert depth_map(7, 3) == [2, 4, 7]
    assert depth_map(5, 5) == [1, 2, 3, 4, 5]


def test_depth_map_uses_exact_integer_floor():
    # In floats (L_T / L_S)·k can land just below an integer: 15/11·11 = 14.999999999999998.
    for num_t in range(1, 60):
        for num_s in range(1, num_t + 1):
            expected = [max(1, (num_t * k) // num_s) for k in range(1, num_s + 1)]
            assert depth_map(num_t, num_s) == expected and expected[-1] == num_t


def test_interpolation_triples_by_hand():
    first = interpolation(1, 28, 24)  # u = 28/24 = 1.1667
    assert (first.a, first.b) == (1, 2) and first.lam == pytest.approx(1 / 6, abs=1e-15)
    assert interpolation(6, 28, 24) == Interp(7, 8, 0.0)  # u = 7 exactly
    seventh = interpolation(7, 28, 24)  # u = 49/6 = 8.1667
    assert (seventh.a, seventh.b) == (8, 9) and seventh.lam == pytest.approx(1 / 6, abs=1e-15)
    assert interpolation(24, 28, 24) == Interp(27, 28, 1.0)  # u = L_T is clipped to a = L_T − 1, λ = 1
    assert interpolation(5, 20, 10) == Interp(10, 11, 0.0)
    assert interpolation(2, 7, 3) == Interp(4, 5, pytest.approx(2 / 3, abs=1e-15))
    assert interpolation(1, 5, 5) == Interp(1, 2, 0.0)


def test_nearest_student_layer_picks_deeper_or_equal():
    # 7→3: ℓ = [2, 4, 7]
    assert [nearest_student_layer(ell, 7, 3) for ell in range(1, 8)] == [1, 1, 2, 2, 3, 3, 3]
    assert nearest_student_layer(20, 20, 10) == 10
    assert nearest_student_layer(3, 20, 10) == 2


def test_nearest_student_layer_deepest_teacher_layers_go_to_the_last_student_layer():
    # ℓ_{L_S} = L_T always, so the paper's "default to L_S" coincides with the min over the set; the
    # deepest teacher layers must still land on L_S. 6→4: ℓ = [1, 3, 4, 6].
    assert [nearest_student_layer(ell, 6, 4) for ell in range(1, 7)] == [1, 2, 2, 3, 4, 4]


def test_student_deeper_than_teacher_is_rejected_with_the_fix():
    with pytest.raises(SemalignError, match="student deeper than teacher.*swap teacher and student"):
        depth_map(10, 12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: depth_map(0, 1), "teacher layer count 0"),
        (lambda: depth_map(4, -1), "student layer count -1"),
        (lambda: nearest_student_layer(0, 8, 4), "critical teacher layer 0 is outside 1..8"),
        (lambda: nearest_student_layer(9, 8, 4), "critical teacher layer 9 is outside 1..8"),
        (lambda: monotone_selection([1.0] * 8, 4, -1), "window -1"),
        (lambda: build_pairing(8, 4, [1.0] * 7), "7 attribution scores for a 8-layer teacher"),
        (lambda: build_pairing(8, 4, [1.0] * 8, window=-2), "window -2"),
        (lambda: build_pairing(8, 4, [1.0] * 8, mode="v3"), "mode 'v3'"),
        (lambda: build_pairing(8, 4, [1.0] * 8, train_layers="some"), "train_layers 'some'"),
        (lambda: build_pairing(8, 4, [1.0] * 8, num_critical=9), "num_critical 9"),
        (lambda: build_pairing(8, 4, [1.0] * 7 + [float("nan")]), r"teacher layers \[8\] are not finite"),
    ],
)
def test_bad_inputs_raise_project_error(call, message):
    with pytest.raises(SemalignError, match=message):
        call()


def test_top_critical_ranks_by_score_then_shallower():
    assert top_critical([0.1, 0.5, 0.2, 0.5, 0.0], 2) == [2, 4]
    assert top_critical([0.1, 0.5, 0.2, 0.5, 0.0], 3) == [2, 3, 4]
    assert top_critical([0.3, 0.3, 0.3], 1) == [1]


def _brute_force(scores, num_s, window):
    num_t = len(scores)
    mapped = depth_map(num_t, num_s)
    best = None
    for path in itertools.product(range(1, num_t + 1), repeat=num_s):
        if any(b < a for a, b in zip(path, path[1:])) or any(
            abs(t - m) > window for t, m in zip(path, mapped)
        ):
            continue
        key = (sum(scores[t - 1] for t in path), -sum(abs(t - m) for t, m in zip(path, mapped)), -sum(path))
        if best is None or key > best[0]:
            best = (key, list(path))
    return best[1]


@pytest.mark.parametrize("seed", range(40))
def test_v2_selection_equals_brute_force_maximum(seed):
    rng = random.Random(seed)
    num_t, num_s = rng.choice([(6, 3), (5, 4), (7, 3), (6, 6)])
    window = rng.choice([0, 1, 2])
    scores = [rng.random() for _ in range(num_t)]
    assert monotone_selection(scores, num_s, window) == _brute_force(scores, num_s, window)


@pytest.mark.parametrize("seed", range(25))
def test_v2_selection_is_monotone_and_within_window(seed):
    rng = random.Random(seed)
    num_t = rng.randint(2, 40)
    num_s = rng.randint(1, num_t)
    window = rng.randint(0, 5)
    scores = [rng.random() for _ in range(num_t)]
    path = monotone_selection(scores, num_s, window)
    mapped = depth_map(num_t, num_s)
    assert len(path) == num_s
    assert all(a <= b for a, b in zip(path, path[1:]))
    assert all(1 <= t <= num_t and abs(t - m) <= window for t, m in zip(path, mapped))


def test_v2_window_zero_and_uniform_scores_give_the_depth_map():
    rng = random.Random(0)
    scores = [rng.random() for _ in range(28)]
    assert monotone_selection(scores, 24, 0) == depth_map(28, 24)
    assert monotone_selection([0.5] * 28, 24, 3) == depth_map(28, 24)


def test_v2_selection_moves_toward_a_dominant_layer():
    scores = [0.0] * 10
    scores[6] = 1.0  # teacher layer 7; 10→5 maps ℓ = [2, 4, 6, 8, 10]
    # Student layers 3 (ℓ=6) and 4 (ℓ=8) both reach layer 7 and, being non-decreasing, may share it.
    assert monotone_selection(scores, 5, 1) == [2, 4, 7, 7, 10]


def test_v1_pairing_trains_the_k_dagger_of_critical_layers():
    scores = [0.0, 0.1, 0.9, 0.2, 0.0, 0.05, 0.8]  # 7→3, ℓ = [2, 4, 7]
    pairing = build_pairing(7, 3, scores, mode="v1", num_critical=2)
    assert [c.teacher_layer for c in pairing.critical] == [3, 7]
    assert [c.student_layer for c in pairing.critical] == [2, 3]
    assert pairing.trained_student_layers == [2, 3]
    assert [p.teacher_layer for p in pairing.layers] == [2, 4, 7]
    assert pairing.layers[1].interp == interpolation(2, 7, 3)


def test_v2_pairing_all_layers_and_critical_layers():
    scores = [0.0, 0.1, 0.9, 0.2, 0.0, 0.05, 0.8]
    every = build_pairing(7, 3, scores, mode="v2", num_critical=1, window=1, train_layers="all")
    assert every.trained_student_layers == [1, 2, 3]
    assert [p.teacher_layer for p in every.layers] == monotone_selection(scores, 3, 1) == [3, 3, 7]
    critical = build_pairing(7, 3, scores, mode="v2", num_critical=1, window=1)
    # k† is found on the selection: t_1 = 3 already reaches the critical teacher layer 3 (the depth map's
    # ℓ = [2, 4, 7] would have given student layer 2)
    assert [c.student_layer for c in critical.critical] == [1]
    assert critical.trained_student_layers == [1]


def test_v2_k_dagger_comes_from_the_selection_not_the_depth_map():
    # the case: 28 → 24 with critical teacher layer 11 and a selection that reaches it early
    scores = [0.0] * 28
    scores[10] = 1.0
    pairing = build_pairing(28, 24, scores, mode="v2", num_critical=1, window=2, frontier_layers=1)
    selection = monotone_selection(scores, 24, 2)
    k_dagger = pairing.critical[0].student_layer
    assert selection[k_dagger - 1] >= 11 and all(t < 11 for t in selection[: k_dagger - 1])
    assert pairing.layers[k_dagger - 1].teacher_layer == 11
    assert k_dagger == nearest_student_layer(11, 28, 24, selection) < nearest_student_layer(11, 28, 24)


def test_v2_frontier_runs_end_at_k_dagger_and_train_shallow_to_deep():
    assert frontier_run(5, 8, 3) == [3, 4, 5]
    assert frontier_run(1, 8, 3) == [1, 2, 3]  # too few layers above: the run starts at the bottom
    assert frontier_run(8, 8, 1) == [8]
    with pytest.raises(SemalignError, match=r"pair.frontier_layers 9 must be in 1..8"):
        frontier_run(4, 8, 9)
    scores = [0.0, 0.1, 0.9, 0.2, 0.0, 0.05, 0.8]  # v2 selection [3, 3, 7], k† = 1
    v2 = build_pairing(7, 3, scores, mode="v2", num_critical=1, window=1, frontier_layers=2)
    assert v2.trained_student_layers == [1, 2]
    v1 = build_pairing(7, 3, scores, mode="v1", num_critical=1, window=1, frontier_layers=2)
    assert v1.trained_student_layers == [2]  # v1 ignores the frontier: the paper's k† alone


def test_both_pairings_are_built_from_one_section_and_round_trip():
    scores = [0.0, 0.1, 0.9, 0.2, 0.0, 0.05, 0.8]
    config = PairConfig(num_critical=1, window=1, frontier_layers=2)
    pairings = build_pairings(7, 3, scores, config)
    assert [p.teacher_layer for p in pairings["v1"].layers] == depth_map(7, 3) == [2, 4, 7]
    assert [p.teacher_layer for p in pairings["v2"].layers] == [3, 3, 7]
    assert pairings["v1"].layers[0].interp == interpolation(1, 7, 3)
    payload = json.loads(json.dumps({mode: p.to_json() for mode, p in pairings.items()}))
    assert read_pairings(payload) == pairings
    with pytest.raises(SemalignError, match=r"lacks the \['v2'\] pairing"):
        read_pairings({"v1": payload["v1"]})


def test_json_roundtrip_and_keys(tmp_path):
    rng = random.Random(1)
    pairing = build_pairing(28, 24, [rng.random() for _ in range(28)], mode="v2", num_critical=3, window=2)
    path = tmp_path / "pairing.json"
    path.write_text(json.dumps(pairing.to_json()))
    payload = json.loads(path.read_text())
    assert Pairing.from_json(payload) == pairing
    assert payload["layers"][0]["interp"] == {"a": 1, "b": 2, "lambda": pytest.approx(1 / 6)}
    assert payload["trained_student_layers"] == pairing.trained_student_layers
    assert len(payload["trained_student_layers"]) >= 1 and payload["depth_map"] == depth_map(28, 24)


def test_from_json_names_a_missing_key():
    payload = build_pairing(4, 2, [0.1, 0.2, 0.3, 0.4]).to_json()
    del payload["depth_map"]
    with pytest.raises(SemalignError, match="depth_map"):
        Pairing.from_json(payload)
