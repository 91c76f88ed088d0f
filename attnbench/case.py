"""The one currency of attnbench: a ``Case`` is one point of a sweep.

Everything that names or groups cases derives from the fields of ``Case``: record columns,
keys for resume and compare, the shape columns of tables and plots, export names, test ids.
A new kind of case (a model-level training step, a world size) is a field added here, with
a default so that older records still read, and every view picks it up.

Field metadata ``tag`` is the field's short name in labels (``b2-h16-n4096-d128-bf16``);
``omit`` says when a label leaves it out (its default, or a value equal to another field).

Two kinds of case share these fields. An operator case (mode ``fwd``, ``bwd``, ``fwdbwd``) times
one attention call of the shape. A ``train`` case times one training step of a model
(``model``, ``size``, ``checkpointing``) whose attention is ``mechanism``; its heads, head dims,
dtype (the precision policy) and decay are the model's, and its batch is the real number of
sequences per step, so ``tokens`` is the tokens a step trains on. At a fixed number of tokens
per step that batch follows the length (``FOLLOWS_LENGTH``): it is not part of a line.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace


def _tag(tag: str, omit=None):
    return {"tag": tag, "omit": omit}


@dataclass(frozen=True)
class Case:
    mechanism: str
    mode: str  # fwd | bwd | fwdbwd | train
    batch: int = field(metadata=_tag("b"))
    heads: int = field(metadata=_tag("h"))
    seq_len: int = field(metadata=_tag("n"))
    head_dim: int = field(metadata=_tag("d"))  # D: the q/k head dim
    # E: the v/o head dim; labels leave it out when it equals D. Records of schema 1 have no
    # value_dim: ``from_row`` takes D, which is what those runs measured.
    value_dim: int = field(metadata=_tag("e", omit=lambda c: c.value_dim == c.head_dim))
    dtype: str = field(metadata=_tag(""))
    decay: bool = field(metadata=_tag("decay", omit=lambda c: not c.decay))
    # A training step (mode "train"): the model family and size preset (attnbench.models), and
    # activation checkpointing. Operator cases leave them at their defaults, so their labels,
    # keys of older records and tables read as before.
    model: str = field(default="", metadata=_tag("", omit=lambda c: not c.model))
    size: str = field(default="", metadata=_tag("", omit=lambda c: not c.size))
    checkpointing: bool = field(default=False,
                                metadata=_tag("ckpt", omit=lambda c: not c.checkpointing))
    # A sequence-parallel case: the sequence (seq_len tokens in all) split over world_size
    # ranks that run the call together, seq_len_per_rank each. 1: one process holds it all.
    world_size: int = field(default=1, metadata=_tag("w", omit=lambda c: c.world_size == 1))

    @property
    def tokens(self) -> int:
        """Tokens one call processes: batch x seq_len (the tokens/s numerator)."""
        return self.batch * self.seq_len

    @property
    def seq_len_per_rank(self) -> int:
        """Tokens of each sequence one rank holds (seq_len for a case of one process)."""
        return self.seq_len // self.world_size

    def key(self) -> tuple:
        """Identity of a case across runs (resume, compare): every field."""
        return tuple(getattr(self, name) for name in KEY_COLUMNS)

    def series(self) -> tuple:
        """Everything but the length (and what follows it, ``FOLLOWS_LENGTH``): the cases of
        one line on a plot."""
        follows = FOLLOWS_LENGTH.get(self.mode, ())
        return tuple(getattr(self, name) for name in SERIES_COLUMNS if name not in follows)

    def shape(self) -> dict:
        """The fields that are neither the mechanism, the mode nor the length."""
        return {name: getattr(self, name) for name in SHAPE_COLUMNS}

    def label(self, only: list[str] | None = None, sep: str = "-") -> str:
        """``b2-h16-n4096-d128-bf16-decay``: the shape and length, one token per field
        (``only``: just these fields)."""
        parts = []
        for f in fields(self):
            if "tag" not in f.metadata or (only is not None and f.name not in only):
                continue
            value, omit = getattr(self, f.name), f.metadata["omit"]
            if omit is not None and omit(self):
                continue
            tag = f.metadata["tag"]
            parts.append(tag if isinstance(value, bool) else f"{tag}{value}")
        return sep.join(parts)

    def with_(self, **changes) -> Case:
        return replace(self, **changes)

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> Case:
        """A Case from a record row (a dict with at least the fields without defaults).

        Extra keys are ignored; value_dim absent (schema 1) means value_dim = head_dim; other
        absent fields take their defaults. Raises KeyError or ValueError for a row that is
        not a case.
        """
        values = {}
        for f in fields(cls):
            if f.name in row and row[f.name] is not None:
                values[f.name] = _coerce(f.type, row[f.name])
            elif f.name == "value_dim" and row.get("head_dim") is not None:
                values[f.name] = int(row["head_dim"])
            elif f.default is not MISSING:
                values[f.name] = f.default
            else:
                raise KeyError(f.name)
        return cls(**values)


def _coerce(type_name: str, value):
    if type_name == "int":
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if type_name == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"expected a boolean, got {value!r}")
        return bool(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


KEY_COLUMNS: list[str] = [f.name for f in fields(Case)]
SERIES_COLUMNS: list[str] = [c for c in KEY_COLUMNS if c != "seq_len"]
SHAPE_COLUMNS: list[str] = [c for c in KEY_COLUMNS if c not in ("mechanism", "mode", "seq_len")]
# Fields that change along a line in cases of a mode: a training step's batch is tokens per
# step // seq_len (at least 1), so it falls as the length grows.
FOLLOWS_LENGTH: dict[str, tuple[str, ...]] = {"train": ("batch",)}
# The fields with a default, and that default: a field at its default in every record of a
# table (the model of an operator sweep) is not shown.
DEFAULTS: dict = {f.name: f.default for f in fields(Case) if f.default is not MISSING}


def view_columns(frame) -> tuple[list[str], list[str]]:
    """(the shape columns that tell the lines of a tidy ``frame`` apart, those the same in
    every row): what tables and figures label rows and titles with.

    Left out of both: a field at its default in every row (``model`` of an operator sweep),
    and a field that follows the length in every row's mode (a training step's batch).
    """
    varying, fixed = [], []
    for col in SHAPE_COLUMNS:
        values = frame[col]
        if col in DEFAULTS and (values == DEFAULTS[col]).all():
            continue
        if all(col in FOLLOWS_LENGTH.get(mode, ()) for mode in frame["mode"].unique()):
            continue
        (varying if values.nunique() > 1 else fixed).append(col)
    return varying, fixed
