"""FP8 against bf16 for the frozen base's matrix products (issue #22): the GEMMs of one 1.8B/7B layer, forward
(x @ W^T) and the input gradient (g @ W), each as bf16 ``mm`` and as ``torch._scaled_mm`` with row-wise scales
(e4m3, weights quantized once, activations per call), with and without the activation quantization, median of
50 after warm-up, and the relative error of the FP8 result against bf16.

    python benchmarks/fp8_gemm.py --model 1.8b --tokens 16384
"""

from __future__ import annotations

import argparse
import statistics

import torch

LAYERS = {  # (in, out) of each linear layer: q, k, v, o, gate, up, down
    "1.8b": [(2048, 2048), (2048, 1024), (2048, 1024), (2048, 2048), (2048, 8192), (2048, 8192), (8192, 2048)],
    "7b": [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)],
}
E4M3 = torch.float8_e4m3fn
MAX = torch.finfo(E4M3).max


def rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / MAX
    return (x.float() / scale).to(E4M3), scale


def timed(fn, n: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="1.8b", choices=sorted(LAYERS))
    p.add_argument("--tokens", type=int, default=16384)
    args = p.parse_args()
    torch.manual_seed(0)
    total = {"bf16": 0.0, "fp8": 0.0, "fp8+quant": 0.0}
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}, {args.tokens} tokens")
    print(f"{'in':>6} {'out':>6} {'pass':>8} {'bf16 ms':>8} {'fp8 ms':>8} {'+quant':>8} {'speedup':>8} {'rel err':>8}")
    for k, n in LAYERS[args.model]:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        w8, sw = rowwise(w)  # forward operand: rows of W (out), scale per output
        wt8, swt = rowwise(w.t().contiguous())  # input-gradient operand: rows of W^T (in), scale per input
        for name, a, b, b8, sb in (("forward", torch.randn(args.tokens, k, device="cuda", dtype=torch.bfloat16), w, w8, sw),
                                   ("grad_in", torch.randn(args.tokens, n, device="cuda", dtype=torch.bfloat16), w.t().contiguous(), wt8, swt)):
            a8, sa = rowwise(a)
            ref = a @ b.t()

            def fp8(a8=a8, sa=sa, b8=b8, sb=sb):
                return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16, use_fast_accum=True)

            def fp8_quant(a=a, b8=b8, sb=sb):
                q, s = rowwise(a)
                return torch._scaled_mm(q, b8.t(), scale_a=s, scale_b=sb.t(), out_dtype=torch.bfloat16, use_fast_accum=True)

            t_bf16 = timed(lambda a=a, b=b: a @ b.t())
            t_fp8, t_q = timed(fp8), timed(fp8_quant)
            err = ((fp8().float() - ref.float()).norm() / ref.float().norm()).item()
            total["bf16"] += t_bf16
            total["fp8"] += t_fp8
            total["fp8+quant"] += t_q
            print(f"{k:>6} {n:>6} {name:>8} {t_bf16:>8.3f} {t_fp8:>8.3f} {t_q:>8.3f} {t_bf16 / t_q:>7.2f}x {err:>8.4f}")
    print(f"one layer, forward + input gradient: bf16 {total['bf16']:.3f} ms, fp8 {total['fp8']:.3f} ms ({total['bf16'] / total['fp8']:.2f}x), "
          f"fp8 with eager activation quantization {total['fp8+quant']:.3f} ms ({total['bf16'] / total['fp8+quant']:.2f}x)")
    compiled = torch.compile(rowwise)
    a = torch.randn(args.tokens, 8192 if args.model == "1.8b" else 14336, device="cuda", dtype=torch.bfloat16)
    print(f"row-wise quantization of {tuple(a.shape)}: eager {timed(lambda: rowwise(a)):.3f} ms, compiled {timed(lambda: compiled(a)):.3f} ms")


if __name__ == "__main__":
    main()
