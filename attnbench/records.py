"""Run directories: ``meta.json`` once, ``records.jsonl`` appended per case, tidy tables at the end.

A record is one tidy row per case, whatever happened to it. Each is appended and flushed to
disk the moment it exists, so a crash loses nothing already measured; ``records.parquet``
and ``records.csv`` are written from the JSONL when the run ends.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from attnbench.errors import UsageError
from attnbench.spec import Case

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "error", "unsupported", "skipped", "timeout")
META_FILE, JSONL_FILE = "meta.json", "records.jsonl"
PARQUET_FILE, CSV_FILE = "records.parquet", "records.csv"
NAN = float("nan")


@dataclass
class Record:
    mechanism: str
    family: str
    mode: str
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    dtype: str
    decay: bool
    device: str
    status: str
    reason: str = ""
    impl: str = ""  # what really ran, where a mechanism can dispatch to several kernels
    time_ms: float = NAN  # median
    time_ms_p20: float = NAN
    time_ms_p80: float = NAN
    reps: int = 0
    host_ms: float = NAN  # host time to issue one call (CUDA, calls <= 2 ms); ~time_ms: host-bound
    tokens_per_s: float = NAN  # batch x seq_len / time
    tflops: float = NAN  # from the mechanism's FLOP model
    peak_mem_mib: float = NAN  # peak allocated during the measured call, inputs included
    extra_mem_mib: float = NAN  # the part above what was allocated before the call
    max_rel_err: float = NAN  # worst of output and gradients against the float64 oracle
    check: str = ""  # "pass" | "fail" | "" (not checked)
    check_tol: float = NAN
    compile_s: float = NAN  # first call (compilation, autotuning), kept out of time_ms
    timestamp: float = field(default=NAN)

    @classmethod
    def for_case(cls, case: Case, family: str, device: str, status: str, **values) -> Record:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return cls(
            mechanism=case.mechanism, family=family, mode=case.mode, batch=case.batch,
            heads=case.heads, seq_len=case.seq_len, head_dim=case.head_dim, dtype=case.dtype,
            decay=case.decay, device=device, status=status, **values,
        )

    def case(self) -> Case:
        return Case(self.mechanism, self.mode, self.batch, self.heads, self.seq_len,
                    self.head_dim, self.dtype, self.decay)


RECORD_COLUMNS = [f.name for f in fields(Record)]


def _json_value(v):
    return None if isinstance(v, float) and math.isnan(v) else v


class RecordWriter:
    """Appends one JSON line per record and flushes it to disk at once."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / JSONL_FILE
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(self, record: Record) -> None:
        row = {k: _json_value(v) for k, v in asdict(record).items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_meta(run_dir: Path, meta: dict) -> None:
    meta = {"schema_version": SCHEMA_VERSION, **meta}
    (Path(run_dir) / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def read_meta(run_dir: Path) -> dict:
    """The run's metadata; UsageError if the directory is not a run of this schema."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"results directory {str(run_dir)!r} does not exist")
    meta_path = run_dir / META_FILE
    if not meta_path.is_file():
        raise UsageError(f"{str(run_dir)!r} is not an attnbench run directory (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{meta_path} is not valid JSON: {exc}") from None
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{str(run_dir)!r} has schema version {version}, this attnbench reads {SCHEMA_VERSION}"
        )
    return meta


def read_jsonl(run_dir: Path) -> list[dict]:
    """The rows of records.jsonl; a last line cut off by a crash is ignored."""
    path = Path(run_dir) / JSONL_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_records(run_dir: Path) -> list[Record]:
    """The records already in a run directory, as Records (for --resume)."""
    records = []
    for row in read_jsonl(run_dir):
        values = {k: (NAN if v is None else v) for k, v in row.items() if k in RECORD_COLUMNS}
        records.append(Record(**values))
    return records


def to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    for col in ("batch", "heads", "seq_len", "head_dim", "reps"):
        df[col] = df[col].astype("int64")
    df["decay"] = df["decay"].astype(bool)
    for col in df.columns:
        if col not in ("batch", "heads", "seq_len", "head_dim", "reps", "decay") and (
            Record.__dataclass_fields__[col].type == "float"
        ):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    str_cols = [c for c in df.columns if Record.__dataclass_fields__[c].type == "str"]
    df[str_cols] = df[str_cols].fillna("")
    return df


def load(run_dir: Path) -> pd.DataFrame:
    """All records of a run as a tidy DataFrame (one row per case). UsageError if unusable."""
    read_meta(run_dir)
    rows = read_jsonl(run_dir)
    if not rows:
        raise UsageError(f"{str(run_dir)!r} holds no records ({JSONL_FILE} is missing or empty)")
    return to_frame(rows)


def finalize(run_dir: Path) -> pd.DataFrame:
    """Write records.parquet and records.csv from records.jsonl; returns the frame."""
    rows = read_jsonl(run_dir)
    df = to_frame(rows)
    df.to_parquet(Path(run_dir) / PARQUET_FILE, index=False)
    df.to_csv(Path(run_dir) / CSV_FILE, index=False)
    return df
