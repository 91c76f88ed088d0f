"""Run directories: ``meta.json`` once, ``records.jsonl`` appended per case, tidy tables at the end.

A ``Record`` is a ``Case`` plus what happened to it, one tidy row whatever the outcome. Each
is appended and flushed to disk the moment it exists, so a crash loses nothing already
measured; ``records.parquet`` and ``records.csv`` are written from the JSONL at the end.

The journal (``records.jsonl``) never loses or corrupts a record:

- One writer at a time: ``RunWriter`` holds an exclusive ``flock`` on ``run.lock`` while it
  writes. The kernel drops the lock when its process dies, so a killed run leaves no stale
  lock behind; a second writer gets one clear error line.
- An append never joins a fragment: a last line torn by a crash (no newline at its end) is
  moved to ``records.torn`` before anything is appended.
- Before a case is measured a ``started`` marker line is written; a process killed inside
  the case (the system's OOM killer, a segfault) leaves the marker without a record, and
  ``--resume`` turns it into an ``error`` record, so the case is never walked into again.
  An interrupt (Ctrl-C, SIGINT) writes an ``abandoned`` line instead: the case runs again.
- A damaged or foreign line is reported by its number and never crashes a view.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from attnbench.case import KEY_COLUMNS, Case
from attnbench.errors import UsageError
from attnbench.sizes import MAX_SIZE

SCHEMA_VERSION = 2
# Schema 1 records have no value_dim: Case.from_row takes the head dim, which they measured.
READABLE_SCHEMAS = (1, 2)
STATUSES = ("ok", "oom", "error", "unsupported", "skipped", "timeout")
META_FILE, JSONL_FILE, LOCK_FILE = "meta.json", "records.jsonl", "run.lock"
TORN_FILE = "records.torn"
PARQUET_FILE, CSV_FILE = "records.parquet", "records.csv"
NAN = float("nan")


@dataclass(frozen=True)
class Record:
    case: Case
    family: str
    device: str
    status: str
    reason: str = ""
    impl: str = ""  # what really ran, where a mechanism can dispatch to several kernels
    time_ms: float = NAN  # median of measured repetitions (ok records only)
    time_ms_p20: float = NAN
    time_ms_p80: float = NAN
    reps: int = 0
    host_ms: float = NAN  # host time to issue one call (CUDA, calls <= 2 ms); ~time_ms: host-bound
    tokens_per_s: float = NAN  # batch x seq_len / time (decode: batch / step time)
    tflops: float = NAN  # from the mechanism's FLOP model
    gbps: float = NAN  # achieved bandwidth, GB/s by the mechanism's byte model (its traffic)
    peak_mem_mib: float = NAN  # peak allocated during the measured call, inputs included
    extra_mem_mib: float = NAN  # the part above what was allocated before the call
    # decode: the KV cache or state kept for the context, MiB (NaN: the call keeps none)
    cache_mib: float = NAN
    max_rel_err: float = NAN  # worst of output and gradients against the float64 oracle
    check: str = ""  # "pass" | "fail" | "" (not checked)
    check_tol: float = NAN
    compile_s: float = NAN  # first call (compilation, autotuning), kept out of time_ms
    timestamp: float = NAN
    # Where it ran (not part of the case): the rank of a sharded run that wrote it (0 for one
    # process) and its GPU index (-1: the CPU). A sequence-parallel case ran on all
    # world_size ranks; rank 0 writes its record, its times and memory the slowest rank's.
    rank: int = 0
    device_index: int = -1
    seq_len_per_rank: int = 0  # tokens of each sequence one rank held (0: not recorded)
    comm_bytes: float = NAN  # bytes one rank sent to collectives per call (sequence-parallel)
    # Extra work ATTNBENCH_PLANT_SLOWDOWN added to each timed call, as a fraction of its time
    # (attnbench.testing: a test hook; 0 in every real measurement).
    planted: float = 0.0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    def row(self) -> dict:
        """The flat row: the case's fields, then the results."""
        row = self.case.to_row()
        row.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "case"})
        return row

    @classmethod
    def from_row(cls, row: dict) -> Record:
        """A Record from a row of any readable schema. ValueError if it is not a record."""
        if not isinstance(row, dict):
            raise ValueError(f"not a record (a JSON {json_kind(row)})")
        case = case_from_row(row)
        values = {}
        for f in fields(cls):
            if f.name == "case" or f.name not in row:
                continue
            value = row[f.name]
            if f.type == "float":
                value = NAN if value is None else float(value)
            elif f.type == "int":
                value = _whole(f.name, value or 0)
            elif not isinstance(value, str):
                raise ValueError(f"{f.name} is {value!r}, not a string")
            values[f.name] = value
        for required in ("family", "device", "status"):
            if required not in values:
                raise ValueError(f"not a record (no {required!r})")
        return check_record(cls(case=case, **values))


# --- a journal line read as untrusted ----------------------------------------------------------
# Every value of a journal is checked for its type, its range and finiteness: a line that
# fails is a damaged line (reported by number), never a valid record and never a traceback.

CASE_SIZES = ("batch", "heads", "seq_len", "head_dim", "value_dim", "world_size")
CASE_MODES = ("fwd", "bwd", "fwdbwd", "decode", "train")  # attnbench.modes.MODES
CASE_DTYPES = ("fp16", "bf16", "fp32")
CHECKS = ("pass", "fail", "")


def json_kind(value) -> str:
    """What JSON calls the type of a parsed value: object, array, string, number, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


def case_from_row(row) -> Case:
    """A checked Case from a journal row (a record's, or a started marker's): ValueError for
    anything that is not a case this attnbench could have run."""
    if not isinstance(row, dict):
        raise ValueError(f"not a case (a JSON {json_kind(row)})")
    for f in fields(Case):
        if f.type == "int" and row.get(f.name) is not None:
            _whole(f.name, row[f.name])
    try:
        case = Case.from_row(row)
    except KeyError as exc:
        raise ValueError(f"not a record (no {exc.args[0]!r})") from None
    if not case.mechanism:
        raise ValueError("mechanism is empty")
    for name in CASE_SIZES:
        value = getattr(case, name)
        if not 1 <= value <= MAX_SIZE:
            raise ValueError(f"{name} is {value}, outside 1..{MAX_SIZE}")
    if case.mode not in CASE_MODES:
        raise ValueError(f"unknown mode {case.mode!r}")
    if case.dtype not in CASE_DTYPES:
        raise ValueError(f"unknown dtype {case.dtype!r}")
    return case


def _whole(name: str, value) -> int:
    """``value`` as an int, or ValueError naming the field (Infinity, 1.5, "x", true)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise ValueError(f"{name} is {value!r}, not a whole number")
    return int(value)


def check_record(rec: Record) -> Record:
    """``rec`` if every result is possible, else ValueError saying which is not.

    Floats are NaN (not measured) or finite and not negative; an ok record has a positive
    time; counts and places are whole numbers in range.
    """
    for f in fields(rec):
        value = getattr(rec, f.name)
        if f.type == "float" and not math.isnan(value):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} is {value!r}, not a finite number >= 0")
    if rec.status == "ok" and not rec.time_ms > 0:  # NaN fails too
        raise ValueError(f"an ok record with time_ms {rec.time_ms!r}")
    for name, low in (("reps", 0), ("rank", 0), ("device_index", -1), ("seq_len_per_rank", 0)):
        value = getattr(rec, name)
        if not low <= value <= MAX_SIZE:
            raise ValueError(f"{name} is {value}, outside {low}..{MAX_SIZE}")
    if rec.check not in CHECKS:
        raise ValueError(f"unknown check {rec.check!r}")
    return rec


RESULT_COLUMNS = [f.name for f in fields(Record) if f.name != "case"]
RECORD_COLUMNS = KEY_COLUMNS + RESULT_COLUMNS
_TYPES = {f.name: f.type for f in fields(Case)} | {f.name: f.type for f in fields(Record)}


def json_value(v):
    """A value as JSON holds it: NaN (a number not measured) as null."""
    return None if isinstance(v, float) and math.isnan(v) else v


# --- the journal ---------------------------------------------------------------------------


@dataclass
class Journal:
    """What records.jsonl holds: records, cases begun but never recorded, damaged lines."""

    records: list[Record] = field(default_factory=list)
    unfinished: list[Case] = field(default_factory=list)  # a started marker with no record
    problems: list[str] = field(default_factory=list)  # "line 7: ..." per damaged line
    # The case whose started marker is the last whole line: if a torn line follows it, that
    # fragment was this case's record (the process died writing it, after measuring).
    last_started: Case | None = None


def rank_journal(rank: int) -> str:
    """The journal one rank of a sharded run appends to (merged into records.jsonl at the end)."""
    return f"records.rank{rank}.jsonl"


def read_journal(run_dir: Path, name: str = JSONL_FILE) -> Journal:
    path = Path(run_dir) / name
    journal = Journal()
    if not path.is_file():
        return journal
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    started: dict[tuple, Case] = {}
    lines = data.split(b"\n")
    torn = lines[-1]  # bytes after the last newline: a line cut off by a crash, or nothing
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        journal.last_started = None
        try:
            row = json.loads(_utf8(raw))
            if isinstance(row, dict) and "started" in row:
                case = case_from_row(row["started"])
                started[case.key()] = journal.last_started = case
                continue
            if isinstance(row, dict) and "abandoned" in row:  # interrupted: run it again
                started.pop(case_from_row(row["abandoned"]).key(), None)
                continue
            rec = Record.from_row(row)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:  # JSONDecodeError too
            journal.problems.append(f"line {number}: {_why(exc)}")
            continue
        started.pop(rec.case.key(), None)
        journal.records.append(rec)
    if torn.strip():
        journal.problems.append(f"line {len(lines)}: cut off without its newline (a crash "
                                f"while writing); {len(torn)} bytes ignored")
    journal.unfinished = list(started.values())
    return journal


def _utf8(raw: bytes) -> str:
    """The line as text; ValueError naming the first byte that is not UTF-8 (json.loads of
    bytes would guess another encoding and report that one)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                         f"{exc.start + 1})") from None


def _why(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return "not JSON"
    if isinstance(exc, OverflowError):
        return f"a number out of range ({exc})"
    return str(exc) or type(exc).__name__


class RunWriter:
    """The one writer of a run directory: holds its lock, appends records and markers.

    Opening it repairs a torn last line (moved to records.torn) so no append joins it.
    ``name``: another journal of the directory (a rank's, or a profile's kernels.jsonl),
    with its own lock and torn file.
    """

    def __init__(self, run_dir: Path, name: str = JSONL_FILE):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        if name.startswith("records"):  # records.rank1.jsonl: run.rank1.lock, records.torn.rank1
            tag = "" if name == JSONL_FILE else name.removeprefix("records").removesuffix(".jsonl")
            lock, torn = LOCK_FILE.replace(".lock", tag + ".lock"), TORN_FILE + tag
        else:  # kernels.jsonl: kernels.lock, kernels.torn
            stem = name.removesuffix(".jsonl")
            lock, torn = f"{stem}.lock", f"{stem}.torn"
        self._lock = _lock(self.run_dir, lock)
        try:
            self.repaired = _repair_torn_tail(self.path, self.run_dir / torn)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept for the run)
        except OSError as exc:
            self._lock.close()
            raise UsageError(f"cannot write {self.path}: {exc.strerror}") from None

    def _append(self, row: dict) -> None:
        try:
            self._file.write(json.dumps(row, allow_nan=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:  # a full disk, a lost mount: what was appended before is kept
            raise UsageError(f"cannot write {self.path}: {exc.strerror or exc}; "
                             f"{resume_hint(self.run_dir)}") from None

    def started(self, case: Case, timestamp: float) -> None:
        """Mark ``case`` as begun: if the process dies inside it, resume records that."""
        self._append({"started": case.to_row(), "timestamp": timestamp, "pid": os.getpid()})

    def abandoned(self, case: Case, timestamp: float) -> None:
        """``case`` was interrupted (Ctrl-C), not killed: a resume runs it again."""
        self._append({"abandoned": case.to_row(), "timestamp": timestamp})

    def write(self, record: Record) -> None:
        self.write_row(record.row())

    def write_row(self, row: dict) -> None:
        """Append one flat row (NaN as null), flushed to disk at once."""
        self._append({k: json_value(v) for k, v in row.items()})

    def close(self) -> None:
        self._file.close()
        self._lock.close()  # closing the descriptor drops the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _lock(run_dir: Path, name: str = LOCK_FILE):
    path = run_dir / name
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the run)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"{run_dir} is being written by {holder}; wait for it to finish "
                         "or choose another directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"attnbench pid {os.getpid()}\n")
    handle.flush()
    return handle


def _repair_torn_tail(path: Path, torn_path: Path) -> bool:
    """Move bytes after the last newline into ``torn_path``; True if there were any."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return False
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        with open(torn_path, "ab") as side:
            side.write(data[keep:] + b"\n")
        f.truncate(keep)
    return True


# --- meta and views ------------------------------------------------------------------------


def write_meta(run_dir: Path, meta: dict) -> None:
    meta = {"schema_version": SCHEMA_VERSION, **meta}
    path = Path(run_dir) / META_FILE
    try:
        path.write_text(json.dumps(meta, indent=2, default=str, allow_nan=False) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def is_run_dir(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_meta(run_dir: Path) -> dict:
    """The run's metadata; UsageError if the directory is not a run of a readable schema."""
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
    except OSError as exc:
        raise UsageError(f"cannot read {meta_path}: {exc.strerror}") from None
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if version not in READABLE_SCHEMAS:
        raise UsageError(f"{str(run_dir)!r} has schema version {version}, this attnbench reads "
                         f"{', '.join(map(str, READABLE_SCHEMAS))}")
    return meta


def to_frame(recs: list[Record]) -> pd.DataFrame:
    """Records as a tidy DataFrame, one row per case, columns RECORD_COLUMNS."""
    df = pd.DataFrame([r.row() for r in recs], columns=RECORD_COLUMNS)
    for col in RECORD_COLUMNS:
        kind = _TYPES[col]
        if kind == "int":
            df[col] = df[col].astype("int64")
        elif kind == "bool":
            df[col] = df[col].astype(bool)
        elif kind == "float":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        else:
            df[col] = df[col].fillna("").astype(str)
    return df


def load(run_dir: Path, strict: bool = False) -> pd.DataFrame:
    """All records of a run as a tidy DataFrame (one row per case, the last record wins).

    Damaged lines are listed in ``df.attrs["problems"]`` (``strict``: a UsageError instead).
    UsageError if the directory is not a run or holds no record.
    """
    read_meta(run_dir)
    journal = read_journal(run_dir)
    if journal.problems and strict:
        raise UsageError(f"{Path(run_dir) / JSONL_FILE}: {len(journal.problems)} damaged "
                         f"line(s): {'; '.join(journal.problems[:5])}")
    if not journal.records:
        raise UsageError(f"{str(run_dir)!r} holds no records ({JSONL_FILE} is missing or empty)")
    twice = duplicated_cases(journal.records)
    if twice and strict:
        raise UsageError(f"{Path(run_dir) / JSONL_FILE}: {duplicates_line(twice)}")
    df = latest_frame(journal.records)
    df.attrs["problems"] = journal.problems
    df.attrs["duplicated_cases"] = twice
    return df


def latest_frame(recs: list[Record]) -> pd.DataFrame:
    """Records as a tidy frame, one row per case: the last record of each case wins
    (``attrs["duplicates"]``: how many earlier ones were left out)."""
    latest = {r.case.key(): r for r in recs}
    df = to_frame(list(latest.values()))
    df.attrs["duplicates"] = len(recs) - len(latest)
    return df


def duplicated_cases(recs: list[Record]) -> list[str]:
    """``"linear-masked fwd b1-h2-n128-d16-fp32 (2 records: ok 1.5 ms, ok 150 ms)"`` for each
    case recorded more than once, in journal order: what a view that keeps the last hides."""
    seen: dict[tuple, list[Record]] = {}
    for rec in recs:
        seen.setdefault(rec.case.key(), []).append(rec)
    out = []
    for group in seen.values():
        if len(group) > 1:
            case = group[0].case
            what = ", ".join(r.status + (f" {r.time_ms:.3g} ms" if r.status == "ok" else "")
                             for r in group)
            out.append(f"{case.mechanism} {case.mode} {case.label()} ({len(group)} records: "
                       f"{what})")
    return out


def duplicates_line(twice: list[str], shown: int = 3) -> str:
    """One line naming the cases recorded more than once (the first ``shown`` of them)."""
    more = f" and {len(twice) - shown} more" if len(twice) > shown else ""
    return (f"{len(twice)} case(s) recorded more than once, the last record of each is used: "
            f"{'; '.join(twice[:shown])}{more}")


def resume_hint(run_dir: Path) -> str:
    """What to do after a write failed: the journal keeps every record written before."""
    return (f"every record written before is kept in {JSONL_FILE}: make room, then continue "
            f"with --resume {run_dir}")


def write_whole(path: Path, write) -> None:
    """``write(partial)`` to a file beside ``path``, then rename it onto ``path``: a failure (a
    full disk) leaves no empty or partial file, and an older whole one in place. Exceptions
    propagate after the partial file is removed."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_tables(df: pd.DataFrame, run_dir: Path, parquet: str, csv: str) -> None:
    """A tidy frame as parquet and CSV in the run directory, each whole or not at all;
    UsageError naming the file if one cannot be written."""
    for name, write in ((parquet, lambda p: df.to_parquet(p, index=False)),
                        (csv, lambda p: df.to_csv(p, index=False))):
        path = Path(run_dir) / name
        try:
            write_whole(path, write)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}; "
                             f"{resume_hint(run_dir)}") from None


def finalize(run_dir: Path) -> pd.DataFrame | None:
    """Write records.parquet and records.csv from records.jsonl; the frame, or None if empty."""
    try:
        df = load(run_dir)
    except UsageError:
        return None
    write_tables(df, run_dir, PARQUET_FILE, CSV_FILE)
    return df
