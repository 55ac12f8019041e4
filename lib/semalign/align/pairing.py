"""Teacher↔student layer pairing (paper §4.1) and the v2 one-teacher-layer-per-student-layer selection.

Both pairings are built for every run (`build_pairings`): the v1, sft and kd objectives follow the v1 depth
map, the v2 objective its own selection (`PAIRING_OF`), so one run trains each objective as its paper states
it.

Layers are numbered 1..L; layer ℓ's output is the residual stream h_ℓ (h_0 = embeddings). All depth
arithmetic is integer or `Fraction`, so floor(L_T·k/L_S) never suffers a float rounding error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from math import isfinite

from semalign.config import at_least, positive
from semalign.errors import SemalignError

MODES = ("v1", "v2")
TRAIN_LAYERS = ("critical", "all")
PAIRING_OF = {"v1": "v1", "sft": "v1", "kd": "v1", "v2": "v2"}  # training objective -> the pairing it follows


@dataclass(frozen=True)
class PairConfig:
    """`pair` section: how many top-attributed teacher layers are critical; the v2 selection's window
    (±window around the depth map); which student layers train ("critical": the partners k† of the critical
    layers; "all"); and frontier_layers: in v2, the consecutive student layers ending at each k† that train
    shallow to deep, one frontier at a time."""

    num_critical: int = positive(1)
    window: int = at_least(2, 0)
    train_layers: str = "critical"
    frontier_layers: int = positive(2)


@dataclass(frozen=True)
class Interp:
    """Exact-depth target (1−lam)·h_a + lam·h_b for a student depth k (paper §4.1)."""

    a: int
    b: int
    lam: float


@dataclass(frozen=True)
class CriticalLayer:
    """A teacher layer judged critical by attribution, and the student layer k† that receives it."""

    teacher_layer: int
    score: float
    student_layer: int


@dataclass(frozen=True)
class LayerPair:
    """One student layer: its single teacher partner (v1: depth map ℓ_k; v2: DP selection t_k), the depth
    interpolation for its depth, and whether it is trained."""

    student_layer: int
    teacher_layer: int
    interp: Interp
    trained: bool


def _is_int(value) -> bool:
    # bool is an int subclass, and `true` in params.yaml must not pass as a layer count.
    return isinstance(value, int) and not isinstance(value, bool)


def check_depths(num_teacher_layers: int, num_student_layers: int) -> None:
    """Reject non-positive depths and a student deeper than its teacher."""
    for name, count in (("teacher", num_teacher_layers), ("student", num_student_layers)):
        if not _is_int(count) or count < 1:
            raise SemalignError(
                f"{name} layer count {count!r} must be a positive integer; check the model config"
            )
    if num_student_layers > num_teacher_layers:
        raise SemalignError(
            f"student deeper than teacher ({num_student_layers} > {num_teacher_layers} layers): SemAlign "
            f"maps "
            "each student layer to a teacher layer at least as deep; swap teacher and student in "
            "params.yaml models"
        )


def depth_map(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """[ℓ_1 … ℓ_{L_S}] with ℓ_k = max(1, floor(L_T·k / L_S)); e.g. 20→10 gives ℓ_k = 2k."""
    check_depths(num_teacher_layers, num_student_layers)
    return [max(1, num_teacher_layers * k // num_student_layers) for k in range(1, num_student_layers + 1)]


def nearest_student_layer(
    teacher_layer: int, num_teacher_layers: int, num_student_layers: int, partners: list[int] | None = None
) -> int:
    """k† = min{k : ℓ_k ≥ ℓ*}, or L_S when no student layer's partner reaches ℓ*. `partners` [L_S]: the
    teacher layer of each student layer (default: the depth map ℓ_k; v2: its selection t_k)."""
    if not _is_int(teacher_layer) or not 1 <= teacher_layer <= num_teacher_layers:
        raise SemalignError(
            f"critical teacher layer {teacher_layer!r} is outside 1..{num_teacher_layers}; "
            "pick a teacher layer in range"
        )
    mapped = partners or depth_map(num_teacher_layers, num_student_layers)
    return next((k for k, ell in enumerate(mapped, start=1) if ell >= teacher_layer), num_student_layers)


def frontier_run(receiver: int, num_student_layers: int, count: int) -> list[int]:
    """The `count` consecutive student layers ending at `receiver` (moved deeper where fewer lie above it),
    in training order: shallow to deep."""
    if not _is_int(count) or not 1 <= count <= num_student_layers:
        raise SemalignError(
            f"pair.frontier_layers {count!r} must be in 1..{num_student_layers} (the student's depth); "
            "fix it in params.yaml"
        )
    first = min(max(1, receiver - count + 1), num_student_layers - count + 1)
    return list(range(first, first + count))


def interpolation(student_layer: int, num_teacher_layers: int, num_student_layers: int) -> Interp:
    """u = L_T·k/L_S, a = max(1, min(floor(u), L_T−1)), b = a+1, λ = clip(u−a, 0, 1).

    The formula is kept as written even where λ lands on 0 or 1 (k = L_S gives a = L_T−1, λ = 1). A
    one-layer teacher has no layer a+1, so there b = a (λ is 0 then).
    """
    check_depths(num_teacher_layers, num_student_layers)
    if not 1 <= student_layer <= num_student_layers:
        raise SemalignError(f"student layer {student_layer!r} is outside 1..{num_student_layers}")
    u = Fraction(num_teacher_layers * student_layer, num_student_layers)
    a = max(1, min(u.numerator // u.denominator, num_teacher_layers - 1))
    lam = min(max(u - a, Fraction(0)), Fraction(1))
    return Interp(a=a, b=min(a + 1, num_teacher_layers), lam=float(lam))


def _check_scores(scores: list[float], num_teacher_layers: int) -> None:
    if len(scores) != num_teacher_layers:
        raise SemalignError(
            f"got {len(scores)} attribution scores for a {num_teacher_layers}-layer teacher; "
            "re-run the attribute stage for this teacher"
        )
    bad = [i for i, s in enumerate(scores, start=1) if not isfinite(s)]
    if bad:
        raise SemalignError(
            f"attribution scores of teacher layers {bad} are not finite; re-run the attribute stage"
        )


def _check_window(window: int) -> None:
    if not _is_int(window) or window < 0:
        raise SemalignError(
            f"pairing window {window!r} must be an integer >= 0; fix pair.window in params.yaml"
        )


def monotone_selection(scores: list[float], num_student_layers: int, window: int) -> list[int]:
    """v2: one teacher layer t_k per student layer, t_1 ≤ … ≤ t_{L_S}, |t_k − ℓ_k| ≤ window, maximising
    Σ_k score[t_k].

    scores: [L_T], scores[ℓ−1] belongs to teacher layer ℓ. Exact DP over (k, t) in O(L_S·window), summing
    in `Fraction` so equal totals compare equal. Ties in total score go to the smaller total distance
    Σ|t_k − ℓ_k|, then to the shallower Σ t_k, then to the shallowest predecessor: uniform scores or
    window = 0 give back the depth map.
    """
    _check_window(window)
    num_teacher_layers = len(scores)
    mapped = depth_map(num_teacher_layers, num_student_layers)
    _check_scores(scores, num_teacher_layers)
    exact = [Fraction(s) for s in scores]

    def candidates(k: int) -> range:
        return range(max(1, mapped[k - 1] - window), min(num_teacher_layers, mapped[k - 1] + window) + 1)

    def gain(k: int, t: int) -> tuple:
        # Lexicographic (score, −distance, −depth): tuples add and compare like the objective they rank.
        return (exact[t - 1], -abs(t - mapped[k - 1]), -t)

    best = {t: gain(1, t) for t in candidates(1)}  # best total of a path ending at (k, t)
    back: list[dict[int, int]] = []  # back[k−2][t]: predecessor t_{k−1} of t_k = t
    for k in range(2, num_student_layers + 1):
        previous = sorted(best)
        new_best, links, run, run_at, i = {}, {}, None, None, 0
        for t in candidates(k):
            # Running max over predecessors t' ≤ t; strict '>' keeps the shallowest among equals.
            while i < len(previous) and previous[i] <= t:
                if run is None or best[previous[i]] > run:
                    run, run_at = best[previous[i]], previous[i]
                i += 1
            new_best[t] = tuple(x + y for x, y in zip(run, gain(k, t)))
            links[t] = run_at
        best = new_best
        back.append(links)
    end = max(sorted(best), key=lambda t: best[t])  # max keeps the first (shallowest) among equals
    path = [end]
    for links in reversed(back):
        path.append(links[path[-1]])
    return path[::-1]


def top_critical(scores: list[float], num_critical: int) -> list[int]:
    """The `num_critical` teacher layers with the highest scores (ties → shallower), in depth order."""
    if not _is_int(num_critical) or not 1 <= num_critical <= len(scores):
        raise SemalignError(
            f"num_critical {num_critical!r} must be in 1..{len(scores)}; fix pair.num_critical in params.yaml"
        )
    ranked = sorted(range(1, len(scores) + 1), key=lambda ell: (-scores[ell - 1], ell))
    return sorted(ranked[:num_critical])


@dataclass
class Pairing:
    """The pairing a training run follows: every student layer's teacher partner and which layers train."""

    mode: str
    num_teacher_layers: int
    num_student_layers: int
    window: int
    train_layers: str
    frontier_layers: int
    depth_map: list[int]
    critical: list[CriticalLayer]
    layers: list[LayerPair]

    @property
    def trained_student_layers(self) -> list[int]:
        return [pair.student_layer for pair in self.layers if pair.trained]

    def to_json(self) -> dict:
        payload = asdict(self)
        for pair in payload["layers"]:
            pair["interp"]["lambda"] = pair["interp"].pop("lam")
        payload["trained_student_layers"] = self.trained_student_layers
        return payload

    @classmethod
    def from_json(cls, payload: dict) -> Pairing:
        try:
            layers = [
                LayerPair(
                    p["student_layer"],
                    p["teacher_layer"],
                    Interp(p["interp"]["a"], p["interp"]["b"], p["interp"]["lambda"]),
                    p["trained"],
                )
                for p in payload["layers"]
            ]
            fields = {
                name: payload[name]
                for name in (
                    "mode",
                    "num_teacher_layers",
                    "num_student_layers",
                    "window",
                    "train_layers",
                    "frontier_layers",
                    "depth_map",
                )
            }
            critical = [CriticalLayer(**c) for c in payload["critical"]]
        except (KeyError, TypeError) as err:
            raise SemalignError(f"pairing file lacks or mangles key {err}; re-run `dvc repro pair`") from err
        return cls(critical=critical, layers=layers, **fields)


def build_pairing(
    num_teacher_layers: int,
    num_student_layers: int,
    scores: list[float],
    mode: str = "v1",
    num_critical: int = 1,
    window: int = 0,
    train_layers: str = "critical",
    frontier_layers: int = 1,
) -> Pairing:
    """Pair layers from per-teacher-layer attribution `scores` ([L_T]).

    v1: student layer k pairs with ℓ_k and the trained layers are the k† of the `num_critical` top-scored
    teacher layers (`train_layers="critical"`) or every student layer (`"all"`). v2: k pairs with the
    monotone DP selection t_k (`window`), k† is found on t_k, and each k† brings the `frontier_layers`
    consecutive layers ending at it (`frontier_run`), trained shallow to deep.
    """
    if mode not in MODES:
        raise SemalignError(f"pairing mode {mode!r} is unknown; use one of {list(MODES)}")
    if train_layers not in TRAIN_LAYERS:
        raise SemalignError(
            f"train_layers {train_layers!r} is unknown; use one of {list(TRAIN_LAYERS)} in params.yaml"
        )
    _check_window(window)
    mapped = depth_map(num_teacher_layers, num_student_layers)
    _check_scores(scores, num_teacher_layers)
    partners = mapped if mode == "v1" else monotone_selection(scores, num_student_layers, window)
    critical = [
        CriticalLayer(
            ell,
            float(scores[ell - 1]),
            nearest_student_layer(ell, num_teacher_layers, num_student_layers, partners),
        )
        for ell in top_critical(scores, num_critical)
    ]
    receivers = {c.student_layer for c in critical}
    if mode == "v2":
        receivers = {k for r in receivers for k in frontier_run(r, num_student_layers, frontier_layers)}
    layers = [
        LayerPair(
            k,
            partners[k - 1],
            interpolation(k, num_teacher_layers, num_student_layers),
            train_layers == "all" or k in receivers,
        )
        for k in range(1, num_student_layers + 1)
    ]
    return Pairing(
        mode,
        num_teacher_layers,
        num_student_layers,
        window,
        train_layers,
        frontier_layers,
        mapped,
        critical,
        layers,
    )


def build_pairings(
    num_teacher_layers: int, num_student_layers: int, scores: list[float], config: PairConfig
) -> dict[str, Pairing]:
    """Both pairings, {"v1": ..., "v2": ...}, from one `pair` section (see `build_pairing`)."""
    return {
        mode: build_pairing(
            num_teacher_layers,
            num_student_layers,
            scores,
            mode,
            config.num_critical,
            config.window,
            config.train_layers,
            config.frontier_layers,
        )
        for mode in MODES
    }


def read_pairings(payload: dict) -> dict[str, Pairing]:
    """`build_pairings`' result from its JSON (`data/pairs/<task>.json`: {mode: Pairing.to_json()})."""
    missing = [mode for mode in MODES if mode not in payload]
    if missing:
        raise SemalignError(f"pairing file lacks the {missing} pairing(s); re-run `dvc repro pair`")
    return {mode: Pairing.from_json(payload[mode]) for mode in MODES}
