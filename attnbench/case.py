"""The one currency of attnbench: a ``Case`` is one point of a sweep.

Everything that names or groups cases derives from the fields of ``Case``: record columns,
keys for resume and compare, the shape columns of tables and plots, export names, test ids.
A new kind of case (a model-level training step, a world size) is a field added here, with
a default so that older records still read, and every view picks it up.

Field metadata ``tag`` is the field's short name in labels (``b2-h16-n4096-d128-bf16``);
``omit`` says when a label leaves it out (its default, or a value equal to another field).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace


def _tag(tag: str, omit=None):
    return {"tag": tag, "omit": omit}


@dataclass(frozen=True)
class Case:
    mechanism: str
    mode: str  # fwd | bwd | fwdbwd
    batch: int = field(metadata=_tag("b"))
    heads: int = field(metadata=_tag("h"))
    seq_len: int = field(metadata=_tag("n"))
    head_dim: int = field(metadata=_tag("d"))  # D: the q/k head dim
    # E: the v/o head dim; labels leave it out when it equals D. Records of schema 1 have no
    # value_dim: ``from_row`` takes D, which is what those runs measured.
    value_dim: int = field(metadata=_tag("e", omit=lambda c: c.value_dim == c.head_dim))
    dtype: str = field(metadata=_tag(""))
    decay: bool = field(metadata=_tag("decay", omit=lambda c: not c.decay))

    @property
    def tokens(self) -> int:
        """Tokens one call processes: batch x seq_len (the tokens/s numerator)."""
        return self.batch * self.seq_len

    def key(self) -> tuple:
        """Identity of a case across runs (resume, compare): every field."""
        return tuple(getattr(self, name) for name in KEY_COLUMNS)

    def series(self) -> tuple:
        """Everything but the length: the cases of one line on a plot."""
        return tuple(getattr(self, name) for name in SERIES_COLUMNS)

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
