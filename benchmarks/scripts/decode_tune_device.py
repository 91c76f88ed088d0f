"""On the GPU: lightning2's decode step by tile, plain do_bench (L2 flushed, median), against
the HBM floor of its state traffic (2 x B x H x D x E x 4 bytes a step at the measured copy
bandwidth). Heads 32, D = E = 128, bf16, decay. The default tiles are marked "default"; the
others are what ``lightning_attn2_decode(..., _config=...)`` would take instead.

Usage (from the repository root, after device_setup.sh): python3 decode_tune_device.py [OUT]
"""

from __future__ import annotations

import sys

import torch
import triton
from attnbench.kernels import default_decay, lightning_attn2_decode
from attnbench.kernels import lightning2_decode as module

from attnbench import peaks

H, D, E = 32, 128, 128


def bench(b: int, config: dict | None) -> float:
    g = torch.Generator(device="cuda").manual_seed(b)
    q, k = (torch.randn(b, H, 1, D, generator=g, device="cuda", dtype=torch.bfloat16)
            for _ in range(2))
    v = torch.randn(b, H, 1, E, generator=g, device="cuda", dtype=torch.bfloat16)
    state = torch.randn(b, H, D, E, generator=g, device="cuda")
    decay = default_decay(H, "cuda")
    fn = lambda: lightning_attn2_decode(q, k, v, state, decay, _config=config)  # noqa: E731
    fn()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def main() -> None:
    out = open(sys.argv[1], "w") if len(sys.argv) > 1 else sys.stdout  # noqa: SIM115
    bw = peaks.device_peaks("cuda").get("bandwidth_gbps", float("nan"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name(0)}, {sms} SMs, copy {bw:,.0f} GB/s (measured)",
          file=out)
    print("batch  config                                   step us   GB/s  % of copy", file=out)
    for b in (1, 8, 32, 64, 256):
        default = module._decode_config(b, H, D, E, sms, None)
        configs = [None]
        if b in (1, 32):  # a few tiles beside the default, at both ends of the GPU's fill
            configs += [dict(BLOCK_E=be, BLOCK_D=bd, num_warps=4 if be * bd <= 4096 else 8)
                        for be in (16, 32, 64, 128) for bd in (32, 64, 128)
                        if 2048 <= be * bd <= 8192]
        for config in configs:
            ms = bench(b, config)
            moved = 2 * b * H * D * E * 4
            gbps = moved / (ms / 1e3) / 1e9
            name = "default " + str({kk: default[kk] for kk in ("BLOCK_E", "BLOCK_D",
                                                                  "num_warps")}) \
                if config is None else str(config)
            print(f"{b:5d}  {name:40s} {ms * 1e3:8.2f} {gbps:6,.0f} {100 * gbps / bw:6.1f}%",
                  file=out, flush=True)


if __name__ == "__main__":
    main()
