"""Issue 5's overhead check: time calls with a plain do_bench outside the harness and put
the harness's own records for the same cases beside them.

    python benchmarks/scripts/plain_do_bench.py results/<paper run>

Paper shape (batch 4, heads 32, head dim 128, bf16, causal), forward, 4k and 32k.
"""

import sys

import torch
import torch.nn.functional as F
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnbench import records

B, H, D = 4, 32, 128
BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
            "flash2": SDPBackend.FLASH_ATTENTION}


def plain_ms(backend, n: int) -> float:
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def fn():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    # rep=2000: do_bench's default 100 ms would time a 100 ms call once; a call at 32k
    # varies 99-110 ms from one repetition to the next on the H100, so take a median of ~20.
    return triton.testing.do_bench(fn, warmup=25, rep=2000, return_mode="median")


def main(run_dir: str) -> None:
    df = records.load(run_dir)
    fwd = df[(df["mode"] == "fwd") & (df["status"] == "ok")].set_index(["mechanism", "seq_len"])
    print(f"{'mechanism':<12}{'n':>7}{'plain ms':>11}{'harness ms':>12}{'ratio':>8}")
    for name, backend in BACKENDS.items():
        for n in (4096, 32768):
            plain = plain_ms(backend, n)
            ours = fwd["time_ms"].get((name, n), float("nan"))
            print(f"{name:<12}{n:>7}{plain:>11.3f}{ours:>12.3f}{ours / plain:>8.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
