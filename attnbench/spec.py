"""What a sweep covers (SweepSpec), its named presets, and the cases it expands to.

Two kinds of sweep, one spec: operator sweeps (``build_spec``: mechanisms x shapes x modes) and
training-step sweeps (``build_train_spec``, ``attnbench tgs``: models x sizes x the attention
mechanisms each model takes, mode ``train``).
"""

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
    # A training-step sweep (mode "train"): model families and size presets, tokens per step
    # (batch = tokens_per_step // seq_len, at least 1) and activation checkpointing. Empty
    # models: an operator sweep. Then batch, heads and head_dims are () (the model's).
    models: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()
    tokens_per_step: int = 0
    checkpointing: bool = False
    # Sequence-parallel mechanisms (a sharded run) run each case on each of these numbers of
    # ranks, the run's first ranks; () = all of the run's ranks.
    world_sizes: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SweepSpec:
        """The spec a run's meta.json stores, read as untrusted: UsageError for one this
        attnbench could not have written (a field missing, of another type, out of range)."""
        if not isinstance(data, dict):
            raise UsageError("no sweep spec (its 'spec' is not an object)")
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        try:
            spec = cls(**values)
        except TypeError as exc:  # a field without a default is missing
            raise UsageError(f"an incomplete sweep spec ({exc})") from None
        _check_stored(spec)
        return spec


# What a plain `attnbench run` on a GPU (the quick preset) runs: our kernels beside
# FlashAttention-2, cuDNN and the naive cumsum reference, the comparison a newcomer came for,
# inside a minute on a fresh machine. Left to --mechanisms all or --preset full: the peers
# that are slow to start there (FLA autotunes every new shape, 142 s on a fresh H100; the
# official lightning-attn recompiles for every length) and the other references.
QUICK_MECHANISMS = "lightning2,lightning1,flash2,sdpa-cudnn,linear-cumsum"
_QUICK_GRID = dict(seq_lens="1k..16k", batch="2", heads="16", head_dims="128", dtypes="bf16",
                   modes="fwd,bwd", decay=True, max_case_seconds=2.0, line_seconds=3.0)

PRESETS: dict[str, dict] = {
    # Finishes in well under a minute on 2 CPU cores, over every CPU-capable mechanism.
    "cpu": dict(mechanisms="all", seq_lens="128..1k", batch="1", heads="4", head_dims="32",
                dtypes="fp32", modes="fwd,bwd,decode", decay=True, max_case_seconds=10.0,
                line_seconds=0.0),
    # The first GPU run and the CI regression grid: a minute on one fresh GPU. The slow
    # references (one Python step per token, n x n matrices) say what they can in a few
    # seconds a line; the kernels are far below these budgets.
    "quick": dict(mechanisms=QUICK_MECHANISMS, **_QUICK_GRID),
    # The quick grid over every mechanism that runs on the device: the peers and the slow
    # references too (minutes on a fresh GPU: their first calls compile and autotune).
    "full": dict(mechanisms="all", **_QUICK_GRID),
    # The official Lightning Attention-2 benchmark's shape.
    "paper": dict(mechanisms="all", seq_lens="1k..128k", batch="4", heads="32",
                  head_dims="128", dtypes="bf16", modes="fwd,bwd", decay=True,
                  max_case_seconds=30.0, line_seconds=60.0),
}


def left_out(spec: SweepSpec) -> list[str]:
    """The mechanisms that run on the spec's device and its preset's default left out (the
    quick preset's peers and slow references), where the mechanisms are the preset's own:
    what `--mechanisms all` would add."""
    if spec.models or spec.preset not in PRESETS or (
            spec.mechanisms != PRESETS[spec.preset]["mechanisms"]):
        return []
    chosen = {m.name for m in registry.select(spec.mechanisms, spec.device)}
    return [m.name for m in registry.select("all", spec.device) if m.name not in chosen]


def choose_device(choice: str) -> str:
    """``auto`` (CUDA if torch sees a GPU, else the CPU), ``cpu`` or ``cuda``; UsageError for
    another word, or for cuda where torch sees no GPU."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {choice!r}; choose auto, cpu or cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA GPU here")
    return choice


def _parse_choices(text: str, allowed, what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not items:
        raise UsageError(f"empty {what} list; choose from {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise UsageError(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
    return items


def build_spec(preset: str | None, device: str, mechanisms: str | None = None,
               seq_lens: str | None = None, batch: str | None = None, heads: str | None = None,
               head_dims: str | None = None, dtypes: str | None = None,
               modes: str | None = None, decay: bool | None = None,
               max_case_seconds: float | None = None, value_dims: str | None = None,
               line_seconds: float | None = None, world_sizes: str | None = None) -> SweepSpec:
    """A preset's values, overridden by whatever was given explicitly. Raises UsageError."""
    refuse_empty(mechanisms=mechanisms, seq_lens=seq_lens, batch=batch, heads=heads,
                 head_dim=head_dims, dtype=dtypes, modes=modes, value_dim=value_dims,
                 world_sizes=world_sizes)
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; choose cpu or cuda")
    preset = preset or ("quick" if device == "cuda" else "cpu")
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[preset]

    def pick(value, key):
        return base[key] if value is None else value

    spec = SweepSpec(
        mechanisms=pick(mechanisms, "mechanisms"),
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
        world_sizes=parse_sizes(world_sizes) if world_sizes else (),
    )
    _check_budgets(spec)
    chosen = registry.select(spec.mechanisms, device)  # unknown names fail here, before any work
    if spec.world_sizes and not any(m.sequence_parallel for m in chosen):
        parallel = ", ".join(m.name for m in registry.MECHANISMS if m.sequence_parallel)
        raise UsageError(f"--world-sizes applies to sequence-parallel mechanisms ({parallel}) "
                         f"and --mechanisms {spec.mechanisms} names none")
    return spec


def refuse_empty(**options: str | None) -> None:
    """UsageError for a list option given as an empty string (``--mechanisms ""``): an empty
    list is a mistake (an unset shell variable), never a way to ask for the default."""
    for name, value in options.items():
        if value is not None and not str(value).replace(",", "").strip():
            raise UsageError(f"empty --{name.replace('_', '-')} list; leave the option out for "
                             "its default")


def spec_of_run(meta: dict, run_dir) -> SweepSpec:
    """The sweep a run directory's meta.json holds; UsageError naming the file if it holds
    none this attnbench could have written."""
    try:
        return SweepSpec.from_json(meta.get("spec") if isinstance(meta, dict) else None)
    except UsageError as exc:
        raise UsageError(f"{run_dir}/meta.json: {exc}; it cannot be resumed") from None


def _check_stored(spec: SweepSpec) -> None:
    """UsageError for a stored spec's value of the wrong type or out of range."""
    from attnbench.sizes import MAX_SIZE

    def fail(name: str) -> None:
        raise UsageError(f"sweep spec field {name} is {getattr(spec, name)!r}")

    for name in ("seq_lens", "batch", "heads", "head_dims", "value_dims", "world_sizes"):
        value = getattr(spec, name)
        if not isinstance(value, tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE
                for v in value):
            fail(name)
    if not spec.seq_lens:
        fail("seq_lens")
    for name in ("dtypes", "modes", "models", "sizes"):
        value = getattr(spec, name)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            fail(name)
    for name in ("mechanisms", "preset"):
        if not isinstance(getattr(spec, name), str):
            fail(name)
    if spec.device not in ("cpu", "cuda"):
        fail("device")
    for name in ("decay", "checkpointing"):
        if not isinstance(getattr(spec, name), bool):
            fail(name)
    if not (isinstance(spec.tokens_per_step, int) and 0 <= spec.tokens_per_step <= MAX_SIZE):
        fail("tokens_per_step")
    for name in ("max_case_seconds", "line_seconds"):
        if isinstance(getattr(spec, name), bool) or not isinstance(getattr(spec, name),
                                                                   (int, float)):
            fail(name)
    _check_budgets(spec)


def _check_budgets(spec: SweepSpec) -> None:
    if not (math.isfinite(spec.max_case_seconds) and spec.max_case_seconds > 0):
        raise UsageError(
            f"--max-case-seconds must be a positive number, not {spec.max_case_seconds}")
    if not (math.isfinite(spec.line_seconds) and spec.line_seconds >= 0):
        raise UsageError(f"--line-seconds must be a number >= 0, not {spec.line_seconds}")


def expand(spec: SweepSpec) -> list[Case]:
    """Every case of the sweep, grouped so each line's lengths run shortest first.

    A mechanism that takes no decay runs its cases without it (``decay=False`` in the record),
    so the sweep compares what each mechanism really computes.
    """
    if spec.models:
        return _expand_train(spec)
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


# --- training-step sweeps (attnbench tgs) ---------------------------------------------------

TRAIN_PRESET = "tgs"
# What ``attnbench tgs`` runs when not told otherwise, per device. On a GPU the paper's
# Table 1 lines (LLaMA with FlashAttention-2, TNL with Lightning-1 and -2) and LLaMA with
# cuDNN's attention, the stronger softmax on Hopper, at 0.4B from 1K to 128K, in bf16. On the
# CPU the tiny models with the plain-PyTorch mechanisms, in fp32 (a smoke test: seconds).
TRAIN_DEFAULTS = {
    "cuda": dict(models="llama,tnl", sizes="0.4b", seq_lens="1k..128k", dtype="bf16",
                 mechanisms={"llama": "flash2,sdpa-cudnn", "tnl": "lightning2,lightning1"},
                 max_case_seconds=120.0, line_seconds=0.0),
    "cpu": dict(models="llama,tnl", sizes="tiny", seq_lens="128..1k", dtype="fp32",
                mechanisms={"llama": "sdpa-math", "tnl": "linear-masked"},
                max_case_seconds=10.0, line_seconds=0.0),
}
TRAIN_DTYPES = ("bf16", "fp32")  # the precision policies of attnbench.models
# `attnbench tgs --table1`: the paper's Table 1 for one size. Its lengths (1K..92K) and 128K;
# its models with our kernels and FLA's; 128K tokens a step at every length (the 80K and 92K
# steps hold one sequence: 80K and 92K tokens); checkpointing, so that 128K fits 80 GB.
TABLE1 = dict(models="llama,tnl",
              mechanisms="flash2,sdpa-cudnn,lightning2,lightning1,peer-fla-chunk",
              seq_lens="1k..64k,80k,92k,128k", tokens_per_step="128k",
              max_case_seconds=480.0)  # every cell a number: a case ends inside a 10-minute call
# 3B: to 32K as the paper, 32K tokens a step (a step of 128K tokens takes ~6 s at 3B)
TABLE1_BY_SIZE = {"3b": dict(seq_lens="1k..32k", tokens_per_step="32k")}


def _train_mechanisms(models, selection: str | None, device: str) -> dict[str, list[str]]:
    """model -> the mechanisms it runs: each named mechanism (or family member) goes to every
    model whose attention it can be. UsageError for a name no model takes, or a model left
    with none."""
    from attnbench.models.common import resolve_mechanism

    if selection is None:
        chosen = {m: list(_parse_choices(TRAIN_DEFAULTS[device]["mechanisms"][m],
                                         registry.names(), "mechanism")) for m in models}
        return chosen
    picked = registry.select(selection, device)  # unknown names fail here
    named = {t.strip() for t in selection.split(",")} - set(registry.FAMILIES)
    chosen: dict[str, list[str]] = {m: [] for m in models}
    for mech in picked:
        errors = []
        for model in models:
            try:
                resolve_mechanism(model, mech.name)
                chosen[model].append(mech.name)
            except UsageError as exc:
                errors.append(str(exc))
        if len(errors) == len(models) and mech.name in named:
            raise UsageError(errors[0] if len(errors) == 1 else
                             f"{mech.name} fits none of --models {','.join(models)}: "
                             + "; ".join(errors))
    for model, names in chosen.items():
        if not names:
            raise UsageError(f"none of --mechanisms {selection} can be {model}'s attention; "
                             f"add one, or leave {model} out of --models")
    return chosen


def build_train_spec(device: str, models: str | None = None, sizes: str | None = None,
                     mechanisms: str | None = None, seq_lens: str | None = None,
                     tokens_per_step: str | None = None, dtype: str | None = None,
                     checkpointing: bool = False, max_case_seconds: float | None = None,
                     line_seconds: float | None = None, table1: bool = False) -> SweepSpec:
    """A training-step sweep (``attnbench tgs``): defaults of ``TRAIN_DEFAULTS[device]``,
    overridden by what is given. ``tokens_per_step`` defaults to the longest length, so every
    length trains on the same tokens (batch = longest // length). ``table1``: the defaults
    are the paper's Table 1 for one size (``TABLE1``, ``TABLE1_BY_SIZE``), with checkpointing.

    UsageError before any work for an unknown model or size, a mechanism no chosen model takes
    (a softmax one for tnl), a length or precision a model's mechanism cannot take.
    """
    from attnbench import models as model_lib

    refuse_empty(models=models, size=sizes, mechanisms=mechanisms, seq_lens=seq_lens,
                 tokens_per_step=tokens_per_step, dtype=dtype)
    if table1:
        size = sizes if sizes is not None else TRAIN_DEFAULTS["cuda"]["sizes"]
        if "," in size:
            raise UsageError(f"--table1 takes one --size (a run directory each), not {size}")
        table = {**TABLE1, **TABLE1_BY_SIZE.get(size.strip(), {})}
        models = models or table["models"]
        if mechanisms is None:  # the table's, for the models chosen
            wanted = _parse_choices(models, model_lib.FAMILIES, "model")
            fits = {model_lib.ATTENTION_FAMILY[m] for m in wanted}
            mechanisms = ",".join(n for n in table["mechanisms"].split(",")
                                  if registry.get(n).family in fits)
        seq_lens = seq_lens or table["seq_lens"]
        tokens_per_step = tokens_per_step or table["tokens_per_step"]
        if max_case_seconds is None:
            max_case_seconds = table["max_case_seconds"]
        sizes, checkpointing = size, True
    if device not in TRAIN_DEFAULTS:
        raise UsageError(f"unknown device {device!r}; choose cpu or cuda")
    base = TRAIN_DEFAULTS[device]
    model_names = _parse_choices(models or base["models"], model_lib.FAMILIES, "model")
    size_names = _parse_choices(sizes or base["sizes"], tuple(model_lib.SIZES), "model size")
    lengths = parse_sizes(seq_lens or base["seq_lens"])
    policy = _parse_choices(dtype or base["dtype"], TRAIN_DTYPES, "dtype")
    if len(policy) > 1:
        raise UsageError(f"one --dtype for a training sweep, not {','.join(policy)}")
    tokens = parse_sizes(tokens_per_step) if tokens_per_step else (max(lengths),)
    if len(tokens) > 1:
        raise UsageError(f"one --tokens-per-step, not {tokens_per_step}")
    chosen = _train_mechanisms(model_names, mechanisms, device)
    for model in model_names:
        for size in size_names:
            config = model_lib.config_for(model, size)
            for name in chosen[model]:
                for n in lengths:
                    reason = model_lib.unsupported_reason(config, name, n, policy[0])
                    if reason:
                        raise UsageError(f"{model} {size} with {name} cannot take seq_len "
                                         f"{n}: {reason}")
    spec = SweepSpec(
        mechanisms=",".join(dict.fromkeys(n for m in model_names for n in chosen[m])),
        seq_lens=lengths, batch=(), heads=(), head_dims=(), dtypes=policy, modes=("train",),
        decay=True, device=device,
        max_case_seconds=float(base["max_case_seconds"] if max_case_seconds is None
                               else max_case_seconds),
        preset=TRAIN_PRESET,
        line_seconds=float(base["line_seconds"] if line_seconds is None else line_seconds),
        models=model_names, sizes=size_names, tokens_per_step=tokens[0],
        checkpointing=checkpointing)
    _check_budgets(spec)
    return spec


def _expand_train(spec: SweepSpec) -> list[Case]:
    """model x size x each mechanism the model takes x lengths, shortest first per line."""
    from attnbench.models import config_for
    from attnbench.models.common import resolve_mechanism

    cases: list[Case] = []
    for model in spec.models:
        mechs = []
        for name in spec.mechanisms.split(","):
            try:
                mechs.append(resolve_mechanism(model, name).name)
            except UsageError:
                continue  # another model's attention
        for size in spec.sizes:
            config = config_for(model, size)
            for name in mechs:
                for n in spec.seq_lens:
                    cases.append(Case(
                        mechanism=name, mode="train", batch=max(1, spec.tokens_per_step // n),
                        heads=config.n_heads, seq_len=n, head_dim=config.head_dim,
                        value_dim=config.head_dim, dtype=spec.dtypes[0],
                        decay=config.family == "tnl", model=model, size=size,
                        checkpointing=spec.checkpointing))
    return cases
