"""The device's measured ceilings: memory bandwidth and matrix throughput, the roofline's roofs.

Measured, never typed in: on CUDA a device-to-device copy and a large bf16 matmul timed with
``triton.testing.do_bench`` (median); on the CPU a copy and an fp32 matmul timed with
``torch.utils.benchmark``. A copy reads and writes every byte, so its bandwidth counts both.
The result is cached per device name in ``$XDG_CACHE_HOME/attnbench/peaks.json`` (default
``~/.cache``), so a device is measured once; ``run_sweep`` writes it into each run's meta.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime
from pathlib import Path

import torch

CACHE_NAME = "peaks.json"
# Large enough to leave caches behind and fill the machine, small enough for any GPU we use.
CUDA_COPY_BYTES, CUDA_MATMUL_N = 1 << 30, 8192
CPU_COPY_BYTES, CPU_MATMUL_N = 64 << 20, 1024


def cache_path() -> Path:
    """Where measured peaks are kept (read when called, never at import)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "attnbench" / CACHE_NAME


def device_name(device: str) -> str:
    """The cache key: the GPU's name, or the CPU's model and the threads torch uses."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def measure(device: str) -> dict:
    """Copy bandwidth (GB/s, read + write) and matmul throughput (TFLOP/s) of ``device``."""
    if device == "cuda":
        import triton.testing

        def bench(fn):
            return triton.testing.do_bench(fn, return_mode="median") / 1e3

        copy_bytes, n, dtype = CUDA_COPY_BYTES, CUDA_MATMUL_N, torch.bfloat16
        method = "triton.testing.do_bench median"
    else:
        from torch.utils.benchmark import Timer

        def bench(fn):
            timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            return timer.blocked_autorange(min_run_time=0.2).median

        copy_bytes, n, dtype = CPU_COPY_BYTES, CPU_MATMUL_N, torch.float32
        method = "torch.utils.benchmark blocked_autorange median"
    copy_s = _copy_seconds(bench, copy_bytes, device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul_s = bench(lambda: torch.matmul(a, b))
    return dict(
        device=device_name(device), bandwidth_gbps=2 * copy_bytes / copy_s / 1e9,
        matmul_tflops=2 * n ** 3 / matmul_s / 1e12, matmul_dtype=str(dtype).removeprefix("torch."),
        copy_bytes=copy_bytes, matmul_n=n, method=method, torch=torch.__version__,
        measured=datetime.now().isoformat(timespec="seconds"),
    )


def _copy_seconds(bench, copy_bytes: int, device: str) -> float:
    """One copy of ``copy_bytes`` (its buffers freed on return, before the matmul's)."""
    src = torch.randn(copy_bytes // 4, device=device)  # fp32: 4 bytes an element
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src))


def device_peaks(device: str, remeasure: bool = False) -> dict:
    """The cached peaks of ``device``, measured first if there are none (or ``remeasure``).

    Never raises for a measurement that fails (no memory for the copy, say): returns
    ``{"device": ..., "error": reason}`` instead, and caches nothing.
    """
    path, key = cache_path(), device_name(device)
    try:
        cached = json.loads(path.read_text())
        cached = cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        cached = {}
    if key in cached and not remeasure:
        return cached[key]
    try:
        peaks = measure(device)
    except Exception as exc:  # a roof we cannot measure is said, never invented
        return dict(device=key, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    cached[key] = peaks
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=2) + "\n")
    except OSError:
        pass  # an unwritable cache costs a measurement next time, nothing more
    return peaks
