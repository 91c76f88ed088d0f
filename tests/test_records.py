import json

import pandas as pd
import pytest

from attnbench import records
from attnbench.errors import UsageError
from attnbench.records import Record, RecordWriter
from attnbench.spec import Case

CASE = Case("linear-masked", "fwd", 1, 2, 128, 16, "fp32", True)


def make_run(tmp_path, n_records=2):
    records.write_meta(tmp_path, {"command": "attnbench run"})
    with RecordWriter(tmp_path) as w:
        for i in range(n_records):
            status = "ok" if i % 2 == 0 else "oom"
            w.write(Record.for_case(CASE, "linear", "cpu", status, time_ms=1.5 + i))
    return tmp_path


def test_each_record_is_on_disk_at_once(tmp_path):
    records.write_meta(tmp_path, {})
    w = RecordWriter(tmp_path)
    w.write(Record.for_case(CASE, "linear", "cpu", "ok", time_ms=2.0))
    line = (tmp_path / "records.jsonl").read_text().splitlines()[0]  # before close
    assert json.loads(line)["time_ms"] == 2.0
    assert json.loads(line)["time_ms_p20"] is None  # NaN stored as null
    w.close()


def test_truncated_last_line_is_ignored(tmp_path):
    make_run(tmp_path, 2)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"mechanism": "linear-mas')  # a crash mid-write
    assert len(records.read_jsonl(tmp_path)) == 2


def test_finalize_writes_tidy_parquet_and_csv(tmp_path):
    make_run(tmp_path, 3)
    df = records.finalize(tmp_path)
    assert list(df.columns) == records.RECORD_COLUMNS
    for name in ("records.parquet", "records.csv"):
        back = pd.read_parquet(tmp_path / name) if name.endswith("parquet") else pd.read_csv(
            tmp_path / name)
        assert len(back) == 3
        assert set(records.RECORD_COLUMNS) == set(back.columns)
    assert df["seq_len"].dtype == "int64" and df["time_ms"].dtype == "float64"


def test_read_records_round_trip(tmp_path):
    make_run(tmp_path, 2)
    recs = records.read_records(tmp_path)
    assert recs[0].case() == CASE and recs[1].status == "oom"


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "not an attnbench run directory"),
    (lambda d: (d.mkdir(), (d / "meta.json").write_text('{"schema_version": 99}')),
     "schema version 99"),
    (lambda d: (d.mkdir(), (d / "meta.json").write_text("{nope")), "not valid JSON"),
    (lambda d: (d.mkdir(), records.write_meta(d, {})), "holds no records"),
])
def test_unusable_run_directories(tmp_path, setup, message):
    run_dir = tmp_path / "run"
    setup(run_dir)
    with pytest.raises(UsageError, match=message):
        records.load(run_dir)


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        Record.for_case(CASE, "linear", "cpu", "fine")
