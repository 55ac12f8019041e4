"""Alignment speed: eq. 1-2 computed literally (decompose over every vocabulary basis, then recompose)
vs. the folded map M = S_S S_Tᵀ, on the real pair's shapes with random unit bases, in one run.

    python bench/bench_align.py --device cuda
"""

import argparse
import time

import torch

from semalign.align.alignment import decompose_recompose, decompose_recompose_naive, folded_map


def timed(fn, device: str, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of `repeats` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--d-teacher", type=int, default=1536)
    parser.add_argument("--d-student", type=int, default=896)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument(
        "--token-chunk", type=int, default=1024, help="naive route: tokens per [tokens, vocab] block"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    g = torch.Generator(device=args.device).manual_seed(0)
    s_t = torch.randn(args.vocab, args.d_teacher, device=args.device, generator=g)
    s_s = torch.randn(args.vocab, args.d_student, device=args.device, generator=g)
    s_t /= s_t.norm(dim=-1, keepdim=True)
    s_s /= s_s.norm(dim=-1, keepdim=True)
    h = torch.randn(args.tokens, args.d_teacher, device=args.device, generator=g)

    def naive():
        return torch.cat(
            [
                decompose_recompose_naive(h[i : i + args.token_chunk], s_t, s_s)
                for i in range(0, args.tokens, args.token_chunk)
            ]
        )

    fold_seconds, folded = timed(
        lambda: folded_map(lambda a, b: s_s[a:b], lambda a, b: s_t[a:b], args.vocab), args.device, 1
    )
    folded32 = folded.float()
    naive_seconds, reference = timed(naive, args.device, args.repeats)
    fast_seconds, fast = timed(lambda: decompose_recompose(h, folded32), args.device, args.repeats)
    difference = float((fast - reference).norm() / reference.norm())
    print(
        f"device {args.device} "
        f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
        f"vocab {args.vocab}, d {args.d_teacher}->{args.d_student}, {args.tokens} tokens, float32"
    )
    print(f"naive decompose+recompose  {naive_seconds:10.4f} s")
    print(f"folded map (apply)         {fast_seconds:10.4f} s")
    print(f"speed ratio naive/folded   {naive_seconds / fast_seconds:10.1f}x")
    print(f"building M once            {fold_seconds:10.4f} s")
    print(f"relative difference        {difference:10.2e}")


if __name__ == "__main__":
    main()
