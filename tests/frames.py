"""SYNTHETIC tidy frames for the plot and paper tests: shapes of curves, not measurements.

``paper_frame`` has the columns of ``attnbench.records.load`` and the paper preset's shape:
linear kernels linear in n, softmax and the masked form quadratic, ``oom`` once the memory
model passes 80 GiB (and every longer length, as the runner records it).
"""

from dataclasses import fields

import pandas as pd

from attnbench.case import KEY_COLUMNS, Case

_DEFAULTS = {f.name: f.default for f in fields(Case)}

B, H, D = 4, 32, 128
LENGTHS = [1024 * 2**i for i in range(8)]  # 1k..128k
GPU_MIB = 80 * 1024
QKV_MIB = B * H * D * 2 / 2**20  # one (B, H, n, D) bf16 tensor, MiB per token
PAPER = ("lightning2", "lightning1", "flash2", "linear-masked", "linear-cumsum")


def _model(mech: str, mode: str, n: int, flash_scale: float) -> tuple[float, float]:
    """Synthetic (ms, peak MiB) of one case."""
    x = n / 1024
    bwd = 2.5 if mode == "bwd" else 1.0
    io = (4 if mode == "fwd" else 8) * QKV_MIB * n
    ms, mem = {
        "lightning2": (0.55 * x + 0.1, io + 1),
        "lightning1": (0.05 * x * x + 0.3 * x, io + 1),
        "flash2": (flash_scale * (0.15 * x * x + 0.05 * x), io + 2),
        "linear-masked": (0.3 * x * x, io + B * H * n * n * 4 / 2**20),
        "linear-cumsum": (2.8 * x, io + B * H * n * D * D * 2 / 2**20),
        "xformers": (0.25 * x * x + 0.1 * x, io + 2),
    }[mech]
    return ms * bwd, mem


def row(mech, mode, n, status="ok", ms=float("nan"), mem=float("nan"), device="cuda",
        reason="", check="pass", **shape) -> dict:
    """One record row of the paper's shape (``shape`` overrides it)."""
    case = dict(mechanism=mech, mode=mode, batch=B, heads=H, seq_len=n, head_dim=D,
                value_dim=D, dtype="bf16", decay=mech in ("lightning2", "lightning1",
                                                          "linear-masked"))
    case.update(shape)
    # every case column of attnbench.case, a field added there taking its default
    case = {c: case.get(c, _DEFAULTS.get(c)) for c in KEY_COLUMNS}
    ok = status == "ok"
    nan = float("nan")
    return {**case, "family": "softmax" if mech in ("flash2", "xformers") else "linear",
            "device": device, "status": status, "reason": reason,
            "time_ms": ms if ok else nan, "time_ms_p20": 0.98 * ms if ok else nan,
            "time_ms_p80": 1.03 * ms if ok else nan, "reps": 100 if ok else 0,
            "tokens_per_s": case["batch"] * n / (ms / 1e3) if ok else nan,
            "peak_mem_mib": mem if ok else nan,
            "extra_mem_mib": mem - 3 * QKV_MIB * n if ok else nan,
            "check": check if ok else ""}


def paper_frame(mechanisms=PAPER, flash_scale=1.0, fail_check=None, skip_from=None,
                device="cuda") -> pd.DataFrame:
    """The synthetic paper run; ``skip_from=(mech, n)`` records it skipped from n on,
    ``fail_check=(mech, mode)`` fails its check."""
    rows = []
    for mech in mechanisms:
        for mode in ("fwd", "bwd"):
            oom = False
            for n in LENGTHS:
                ms, mem = _model(mech, mode, n, flash_scale)
                oom = oom or mem > GPU_MIB
                if oom:
                    rows.append(row(mech, mode, n, "oom", reason="CUDA out of memory",
                                    device=device))
                elif skip_from and mech == skip_from[0] and n >= skip_from[1]:
                    rows.append(row(mech, mode, n, "skipped", device=device,
                                    reason="predicted 40 s > --max-case-seconds"))
                else:
                    check = "fail" if fail_check == (mech, mode) else "pass"
                    rows.append(row(mech, mode, n, ms=ms, mem=mem, check=check, device=device))
    return pd.DataFrame(rows)
