"""Time torch.linalg.pinv against the chunked normal-equations route of semalign.teacher.bases (no store
writes).

    python bench/bench_pinv.py                      # 151,936 × 1,536 on CPU: under 3 minutes on 2 cores
    python bench/bench_pinv.py --device cuda --repeats 5

Prints the median time of each route, their ratio, and the relative error of both against float64 pinv.
One call at the full shape takes 20-60 s on a 2-core CPU, so each route stops repeating once it has
used --budget-s seconds (it always runs once; the output says how many calls were timed). Float64
pinv of the full shape takes minutes on a CPU, so there the error is measured on the first
--check-rows rows of W (a smaller matrix of the same width); the output says which shape was checked.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from semalign.teacher.bases import gram, inverse_gram, pinv_row_chunks, unit_rows


def chunked_rows(w: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """The bases route: unit rows of pinv(w)ᵀ, `w: [V, D]` -> `[V, D]` float32 (kept in memory for the
    check)."""
    g_inv = inverse_gram(gram(w, chunk_rows))
    return torch.cat([unit_rows(rows) for _, rows in pinv_row_chunks(w, g_inv, chunk_rows)])


def pinv_rows_direct(w: torch.Tensor) -> torch.Tensor:
    """The one-call route: unit rows of torch.linalg.pinv(w)ᵀ in w's dtype."""
    rows = torch.linalg.pinv(w).T
    return rows / rows.norm(dim=1, keepdim=True)


def timed(fn, w: torch.Tensor, repeats: int, budget_s: float) -> tuple[float, int]:
    """Median seconds over up to `repeats` calls, stopping early once `budget_s` is spent; and the count.
    On CUDA one untimed warm-up call comes first (kernel selection, allocator); a CPU needs none."""
    if w.is_cuda:
        fn(w)
        torch.cuda.synchronize()
    seconds = []
    while len(seconds) < repeats and sum(seconds) < budget_s:
        tic = time.perf_counter()
        fn(w)
        if w.is_cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - tic)
    return statistics.median(seconds), len(seconds)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest row-wise ‖got − want‖ / ‖want‖."""
    return ((got.double() - want).norm(dim=1) / want.norm(dim=1)).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=151936, help="rows V of the random LM head")
    parser.add_argument("--d", type=int, default=1536, help="width D of the random LM head")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per route at most")
    parser.add_argument(
        "--budget-s", type=float, default=50.0, help="stop repeating a route after this many seconds"
    )
    parser.add_argument("--chunk-rows", type=int, default=16384, help="rows per chunk of the chunked route")
    parser.add_argument(
        "--check-rows",
        type=int,
        default=16384,
        help="on CPU, rows of W used for the float64 error check (0: the full W)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    # Column scales spread over 10× give κ(W) ≈ 10, near the ~67 measured on the Qwen2.5-Coder-1.5B head.
    w = (torch.randn(args.vocab, args.d) * torch.logspace(-0.5, 0.5, args.d)).to(args.device)
    print(
        f"W: {args.vocab} × {args.d} float32 on {args.device}, {args.repeats} repeats, chunk "
        f"{args.chunk_rows} rows"
    )

    direct_s, direct_n = timed(pinv_rows_direct, w, args.repeats, args.budget_s)
    chunked_s, chunked_n = timed(lambda m: chunked_rows(m, args.chunk_rows), w, args.repeats, args.budget_s)
    print(f"torch.linalg.pinv (fp32):           {direct_s:8.3f} s  (median of {direct_n})")
    print(f"normal equations (fp64, chunked):   {chunked_s:8.3f} s  (median of {chunked_n})")
    print(f"speed-up of the chunked route:      {direct_s / chunked_s:8.2f}×")

    check = w if args.device != "cpu" or args.check_rows <= 0 else w[: args.check_rows]
    if check.shape[0] < w.shape[0]:
        print(
            f"error check on the first {check.shape[0]} rows ({check.shape[0]} × {args.d}): "
            "float64 pinv of the full W is too slow on a CPU"
        )
    reference = pinv_rows_direct(check.double())
    direct_error = relative_error(pinv_rows_direct(check), reference)
    print(f"relative error vs float64 pinv, torch.linalg.pinv fp32: {direct_error:.2e}")
    print(
        f"relative error vs float64 pinv, chunked route:          "
        f"{relative_error(chunked_rows(check, args.chunk_rows), reference):.2e}"
    )


if __name__ == "__main__":
    main()
