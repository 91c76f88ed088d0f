"""What a sweep covers (SweepSpec), its named presets, and the cases it expands to."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields

from attnbench import registry
from attnbench.case import Case
from attnbench.errors import UsageError
from attnbench.sizes import parse_sizes


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep covers: the axes of its cases and its budgets. Expands to ``Case``s."""

    mechanisms: str  # names or families, comma separated; "all" = all that run on the device
    seq_lens: tuple[int, ...]
    batch: tuple[int, ...]
    heads: tuple[int, ...]
    head_dims: tuple[int, ...]
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    decay: bool  # linear mechanisms with decay get it; others run without and say so
    device: str  # "cuda" | "cpu"
    max_case_seconds: float  # skip a case whose predicted measuring time is longer
    preset: str = ""
    value_dims: tuple[int, ...] = ()  # E; () = the head dim of each case
    # Wall time one line (a mechanism, mode and shape over the lengths) may spend measuring;
    # once spent, its longer lengths are recorded `skipped`. 0 = no limit.
    line_seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SweepSpec:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


PRESETS: dict[str, dict] = {
    # Finishes in well under a minute on 2 CPU cores, over every CPU-capable mechanism.
    "cpu": dict(seq_lens="128..1k", batch="1", heads="4", head_dims="32", dtypes="fp32",
                modes="fwd,bwd", decay=True, max_case_seconds=10.0, line_seconds=0.0),
    # The first GPU run and the CI regression grid: about a minute on one GPU. The slow
    # references (one Python step per token, n x n matrices) say what they can in a few
    # seconds a line; the kernels are far below these budgets.
    "quick": dict(seq_lens="1k..16k", batch="2", heads="16", head_dims="128", dtypes="bf16",
                  modes="fwd,bwd", decay=True, max_case_seconds=2.0, line_seconds=3.0),
    # The official Lightning Attention-2 benchmark's shape.
    "paper": dict(seq_lens="1k..128k", batch="4", heads="32", head_dims="128", dtypes="bf16",
                  modes="fwd,bwd", decay=True, max_case_seconds=30.0, line_seconds=60.0),
}


def _parse_choices(text: str, allowed, what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not items:
        raise UsageError(f"empty {what} list; choose from {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise UsageError(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
    return items


def build_spec(
    preset: str | None,
    device: str,
    mechanisms: str | None = None,
    seq_lens: str | None = None,
    batch: str | None = None,
    heads: str | None = None,
    head_dims: str | None = None,
    dtypes: str | None = None,
    modes: str | None = None,
    decay: bool | None = None,
    max_case_seconds: float | None = None,
    value_dims: str | None = None,
    line_seconds: float | None = None,
) -> SweepSpec:
    """A preset's values, overridden by whatever was given explicitly. Raises UsageError."""
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; choose cpu or cuda")
    preset = preset or ("quick" if device == "cuda" else "cpu")
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[preset]

    def pick(value, key):
        return base[key] if value is None else value

    spec = SweepSpec(
        mechanisms=mechanisms or "all",
        seq_lens=parse_sizes(pick(seq_lens, "seq_lens")),
        batch=parse_sizes(pick(batch, "batch")),
        heads=parse_sizes(pick(heads, "heads")),
        head_dims=parse_sizes(pick(head_dims, "head_dims")),
        dtypes=_parse_choices(pick(dtypes, "dtypes"), registry.DTYPES, "dtype"),
        modes=_parse_choices(pick(modes, "modes"), registry.MODES, "mode"),
        decay=pick(decay, "decay"),
        device=device,
        max_case_seconds=float(pick(max_case_seconds, "max_case_seconds")),
        preset=preset,
        value_dims=parse_sizes(value_dims) if value_dims else (),
        line_seconds=float(pick(line_seconds, "line_seconds")),
    )
    if not (math.isfinite(spec.max_case_seconds) and spec.max_case_seconds > 0):
        raise UsageError(
            f"--max-case-seconds must be a positive number, not {spec.max_case_seconds}")
    if not (math.isfinite(spec.line_seconds) and spec.line_seconds >= 0):
        raise UsageError(f"--line-seconds must be a number >= 0, not {spec.line_seconds}")
    registry.select(spec.mechanisms, device)  # unknown names fail here, before any work
    return spec


def expand(spec: SweepSpec) -> list[Case]:
    """Every case of the sweep, grouped so each line's lengths run shortest first.

    A mechanism that takes no decay runs its cases without it (``decay=False`` in the record),
    so the sweep compares what each mechanism really computes.
    """
    cases: list[Case] = []
    for mech in registry.select(spec.mechanisms, spec.device):
        grid = itertools.product(spec.dtypes, spec.head_dims, spec.batch, spec.heads, spec.modes)
        for dtype, d, b, h, mode in grid:
            for e in spec.value_dims or (d,):
                for n in spec.seq_lens:
                    cases.append(Case(mechanism=mech.name, mode=mode, batch=b, heads=h,
                                      seq_len=n, head_dim=d, value_dim=e, dtype=dtype,
                                      decay=spec.decay and mech.decay))
    return list(dict.fromkeys(cases))
