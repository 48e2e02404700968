"""Sample-isolated attention kernels on packed rows (GPU): FlashAttention-2 varlen (what ``ftcore_varlen``
calls) against cuDNN's ragged attention (the same ``cu_seqlens``), and dense cuDNN SDPA on fixed rows (what
Unsloth gets for unpacked rows, samples not isolated) for scale.

    python benchmarks/attention_kernels.py            # InternLM2-1.8B heads: 16 query, 8 key/value, dim 128

Per layout: forward+backward time (median of --repeat), and the largest relative difference of the output
and of each input gradient against FlashAttention-2 varlen.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch


def flash(q, k, v, cu, longest, scale):
    out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, True, False, scale=scale)
    return out, lambda g: torch.ops.aten._flash_attention_backward(g, q, k, v, out, lse, cu, cu, longest, longest, 0.0, True, rng, unused, scale=scale)


def cudnn_ragged(q, k, v, cu, longest, scale, bias_shape=(0,)):
    out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, longest, longest, True, 0.0, True, False, scale=scale)
    unused = torch.empty(bias_shape, device=q.device, dtype=q.dtype)
    return out, lambda g: torch.ops.aten._cudnn_attention_backward(g, q, k, v, out, lse, seed, offset, unused, cu, cu, longest, longest, 0.0, True, scale=scale)


def repeated(kernel):
    """``kernel`` with the key/value heads repeated up to the query heads (for kernels without grouped heads);
    the key/value gradients summed back per group."""
    def run(q, k, v, cu, longest, scale):
        groups = q.shape[1] // k.shape[1]
        out, bwd = kernel(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), cu, longest, scale)

        def backward(g):
            dq, dk, dv = bwd(g)
            return dq, dk.unflatten(1, (-1, groups)).sum(2), dv.unflatten(1, (-1, groups)).sum(2)

        return out, backward

    return run


def cudnn_ragged_4d_bias(q, k, v, cu, longest, scale):
    return cudnn_ragged(q, k, v, cu, longest, scale, bias_shape=(0, 0, 0, 0))


def timed(fn, repeat: int) -> float:
    times = []
    for i in range(repeat + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev, h, hk, d, total = "cuda", args.heads, args.kv_heads, args.dim, args.tokens
    scale = d**-0.5
    gen = torch.Generator().manual_seed(0)
    lognormal = []
    while sum(lognormal) < total:
        lognormal.append(int(min(2048, max(8, math.exp(math.log(200) + 0.8 * float(torch.randn(1, generator=gen)))))))
    lognormal[-1] -= sum(lognormal) - total
    layouts = {"rows of 2048": [2048] * (total // 2048), "packed lognormal (median 200)": [n for n in lognormal if n > 0]}
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
          f"{total} tokens, {h} query / {hk} key-value heads, dim {d}", flush=True)
    for name, lengths in layouts.items():
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)
        longest = max(lengths)
        q = torch.randn(total, h, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(total, hk, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn(total, hk, d, device=dev, dtype=torch.bfloat16)
        g = torch.randn(total, h, d, device=dev, dtype=torch.bfloat16)
        ref_out, ref_bwd = flash(q, k, v, cu, longest, scale)
        ref_grads = ref_bwd(g)
        print(f"\n{name}: {len(lengths)} samples, longest {longest}")
        kernels = (("flash2 varlen", flash), ("cudnn ragged", cudnn_ragged), ("cudnn ragged, 4-d unused bias", cudnn_ragged_4d_bias),
                   ("cudnn ragged, repeated kv", repeated(cudnn_ragged)), ("cudnn ragged, repeated kv, 4-d", repeated(cudnn_ragged_4d_bias)))
        for kernel_name, kernel in kernels:
            stage = "forward"
            try:
                out, bwd = kernel(q, k, v, cu, longest, scale)
                torch.cuda.synchronize()
                stage = "backward"
                grads = bwd(g)
                torch.cuda.synchronize()
                stage = "timing"
                diffs = [rel(out, ref_out)] + [rel(a, b) for a, b in zip(grads, ref_grads)]

                def fwd_bwd(kernel=kernel):
                    o, b = kernel(q, k, v, cu, longest, scale)
                    b(g)

                ms = timed(fwd_bwd, args.repeat)
                print(f"  {kernel_name:32s} fwd+bwd {ms:7.3f} ms   rel diff out {diffs[0]:.1e} dq {diffs[1]:.1e} dk {diffs[2]:.1e} dv {diffs[3]:.1e}", flush=True)
            except Exception as exc:  # noqa: BLE001  (a kernel this build lacks is a row of the table)
                print(f"  {kernel_name:32s} FAILED in {stage}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        if name.startswith("rows"):  # Unsloth's unpacked rows: dense causal SDPA (cuDNN on Hopper), no isolation
            from torch.nn.attention import SDPBackend, sdpa_kernel

            b = total // 2048
            qd = q.view(b, 2048, h, d).transpose(1, 2).detach().requires_grad_()
            kd = k.view(b, 2048, hk, d).transpose(1, 2).detach().requires_grad_()
            vd = v.view(b, 2048, hk, d).transpose(1, 2).detach().requires_grad_()
            gd = g.view(b, 2048, h, d).transpose(1, 2)
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
                def dense(backend=backend):
                    with sdpa_kernel(backend):
                        torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True).backward(gd)

                try:
                    print(f"  dense {backend.name:24s} fwd+bwd {timed(dense, args.repeat):7.3f} ms", flush=True)
                except Exception as exc:  # noqa: BLE001
                    print(f"  dense {backend.name} FAILED: {type(exc).__name__}: {str(exc)[:200]}", flush=True)


if __name__ == "__main__":
    main()
