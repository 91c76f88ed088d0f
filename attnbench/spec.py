"""What a sweep covers (SweepSpec), its named presets, and the cases it expands to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from attnbench import registry
from attnbench.errors import UsageError
from attnbench.sizes import parse_sizes


@dataclass(frozen=True)
class SweepSpec:
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

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SweepSpec:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


@dataclass(frozen=True)
class Case:
    mechanism: str
    mode: str
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    dtype: str
    decay: bool

    def key(self) -> tuple:
        """Identity of a case across runs (resume, compare)."""
        return (self.mechanism, self.mode, self.batch, self.heads, self.seq_len,
                self.head_dim, self.dtype, self.decay)

    def series(self) -> tuple:
        """Everything but the length: the cases of one line on a plot."""
        return (self.mechanism, self.mode, self.batch, self.heads, self.head_dim,
                self.dtype, self.decay)


PRESETS: dict[str, dict] = {
    # Finishes in well under a minute on 2 CPU cores, over every CPU-capable mechanism.
    "cpu": dict(seq_lens="128..1k", batch="1", heads="4", head_dims="32", dtypes="fp32",
                modes="fwd,bwd", decay=True, max_case_seconds=10.0),
    # A few minutes on one GPU: the CI regression grid.
    "quick": dict(seq_lens="1k..16k", batch="2", heads="16", head_dims="128", dtypes="bf16",
                  modes="fwd,bwd", decay=True, max_case_seconds=20.0),
    # The official Lightning Attention-2 benchmark's shape.
    "paper": dict(seq_lens="1k..128k", batch="4", heads="32", head_dims="128", dtypes="bf16",
                  modes="fwd,bwd", decay=True, max_case_seconds=30.0),
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
    )
    if spec.max_case_seconds <= 0:
        raise UsageError("--max-case-seconds must be positive")
    registry.select(spec.mechanisms, device)  # unknown names fail here, before any work
    return spec


def expand(spec: SweepSpec) -> list[Case]:
    """Every case of the sweep, grouped so each line's lengths run shortest first.

    A mechanism that takes no decay runs its cases without it (``decay=False`` in the record),
    so the sweep compares what each mechanism really computes.
    """
    cases: list[Case] = []
    for mech in registry.select(spec.mechanisms, spec.device):
        decay = spec.decay and mech.decay
        for dtype in spec.dtypes:
            for d in spec.head_dims:
                for b in spec.batch:
                    for h in spec.heads:
                        for mode in spec.modes:
                            for n in spec.seq_lens:
                                cases.append(Case(mech.name, mode, b, h, n, d, dtype, decay))
    return list(dict.fromkeys(cases))
