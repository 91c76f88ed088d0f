import json

import pandas as pd
import pytest
from fakes import make_case, make_run

from attnbench import records
from attnbench.errors import UsageError
from attnbench.records import Record, RunWriter

CASE = make_case("linear-masked", "fwd", 1, 2, 128, 16)


def two_records(tmp_path):
    return make_run(tmp_path, [Record(CASE, "linear", "cpu", "ok", time_ms=1.5),
                               Record(CASE.with_(seq_len=256), "linear", "cpu", "oom")])


def test_each_record_is_on_disk_at_once(tmp_path):
    records.write_meta(tmp_path, {})
    w = RunWriter(tmp_path)
    w.write(Record(CASE, "linear", "cpu", "ok", time_ms=2.0))
    line = (tmp_path / "records.jsonl").read_text().splitlines()[0]  # before close
    row = json.loads(line)
    assert row["time_ms"] == 2.0 and row["value_dim"] == 16
    assert row["time_ms_p20"] is None  # NaN stored as null
    w.close()


def test_record_row_round_trip():
    rec = Record(CASE.with_(value_dim=32), "linear", "cpu", "ok", time_ms=1.0, reps=3)
    back = Record.from_row(json.loads(json.dumps(rec.row())))
    assert back.case == rec.case and back.time_ms == 1.0 and back.reps == 3
    assert str(back) == str(rec)  # NaN fields included


def test_schema_1_rows_take_the_head_dim_as_value_dim(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"schema_version": 1}))
    row = {k: v for k, v in Record(CASE, "linear", "cpu", "ok", time_ms=1.0).row().items()
           if k != "value_dim"}
    (run / "records.jsonl").write_text(json.dumps(row) + "\n")
    df = records.load(run)
    assert df["value_dim"].tolist() == [16] and df["head_dim"].tolist() == [16]


def test_committed_runs_still_load():
    for name in ("baseline", "h100-paper"):
        df = records.load(f"results/{name}")
        assert len(df) and (df["value_dim"] == df["head_dim"]).all()
        assert not df.attrs["problems"]


def test_a_torn_last_line_is_reported_then_moved_aside_before_an_append(tmp_path):
    two_records(tmp_path)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"mechanism": "linear-mas')  # a crash mid-write
    journal = records.read_journal(tmp_path)
    assert len(journal.records) == 2
    assert journal.problems == ["line 3: cut off without its newline (a crash while writing); "
                                "25 bytes ignored"]
    with RunWriter(tmp_path) as w:
        assert w.repaired
        w.write(Record(CASE.with_(seq_len=512), "linear", "cpu", "ok", time_ms=3.0))
    journal = records.read_journal(tmp_path)
    assert [r.case.seq_len for r in journal.records] == [128, 256, 512]
    assert journal.problems == []
    assert (tmp_path / "records.torn").read_text() == '{"mechanism": "linear-mas\n'


@pytest.mark.parametrize("line, why", [
    ("garbage", "not JSON"),
    ("{}", "not a record (no 'mechanism')"),
    ("[1, 2]", "not a record (a JSON array)"),
    ("42", "not a record (a JSON number)"),
    ("null", "not a record (a JSON null)"),
    ('{"mechanism": "m", "mode": "fwd", "batch": 1}', "not a record (no 'heads')"),
    ('{"mechanism": "m", "mode": "fwd", "batch": "x", "heads": 1, "seq_len": 1, '
     '"head_dim": 1, "dtype": "fp32", "decay": true}', "batch is 'x', not a whole number"),
])
def test_damaged_lines_are_listed_by_number_and_left_out(tmp_path, line, why):
    two_records(tmp_path)
    text = (tmp_path / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text("\n".join([text[0], line, text[1]]) + "\n")
    df = records.load(tmp_path)
    assert len(df) == 2
    assert len(df.attrs["problems"]) == 1 and df.attrs["problems"][0].startswith("line 2: ")
    assert why in df.attrs["problems"][0]
    with pytest.raises(UsageError, match="1 damaged line"):
        records.load(tmp_path, strict=True)


def test_started_marker_without_a_record_is_unfinished(tmp_path):
    two_records(tmp_path)
    killed = CASE.with_(seq_len=1024)
    with RunWriter(tmp_path) as w:
        w.started(CASE.with_(seq_len=512), 1.0)
        w.write(Record(CASE.with_(seq_len=512), "linear", "cpu", "ok", time_ms=2.0))
        w.started(killed, 2.0)
    journal = records.read_journal(tmp_path)
    assert journal.unfinished == [killed] and len(journal.records) == 3
    assert len(records.load(tmp_path)) == 3  # markers are not records


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    records.write_meta(tmp_path, {})
    with RunWriter(tmp_path):
        with pytest.raises(UsageError, match="is being written by attnbench pid"):
            RunWriter(tmp_path)
    RunWriter(tmp_path).close()  # released when the first closes


def test_the_last_record_of_a_case_wins_in_views(tmp_path):
    make_run(tmp_path, [Record(CASE, "linear", "cpu", "error", reason="first"),
                        Record(CASE, "linear", "cpu", "ok", time_ms=1.0)])
    df = records.load(tmp_path)
    assert df["status"].tolist() == ["ok"] and df.attrs["duplicates"] == 1


def test_finalize_writes_tidy_parquet_and_csv(tmp_path):
    two_records(tmp_path)
    df = records.finalize(tmp_path)
    assert list(df.columns) == records.RECORD_COLUMNS
    for name in ("records.parquet", "records.csv"):
        back = pd.read_parquet(tmp_path / name) if name.endswith("parquet") else pd.read_csv(
            tmp_path / name)
        assert len(back) == 2
        assert set(records.RECORD_COLUMNS) == set(back.columns)
    assert df["seq_len"].dtype == "int64" and df["time_ms"].dtype == "float64"
    assert df["decay"].dtype == bool


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "not an attnbench run directory"),
    (lambda d: (d.mkdir(), (d / "meta.json").write_text('{"schema_version": 99}')),
     "schema version 99"),
    (lambda d: (d.mkdir(), (d / "meta.json").write_text("[1]")), "schema version None"),
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
        Record(CASE, "linear", "cpu", "fine")


# --- issue 21: every journal value read as untrusted -------------------------------------------


def _ok_row(**changes) -> str:
    row = Record(CASE.with_(seq_len=512), "linear", "cpu", "ok", time_ms=1.0, time_ms_p20=0.9,
                 time_ms_p80=1.1, tokens_per_s=512e3, reps=10).row()
    row.update(changes)
    return json.dumps(row)  # allow_nan: Infinity and NaN as Python's json writes them


@pytest.mark.parametrize("line, why", [
    (_ok_row(seq_len=float("inf")), "seq_len"),
    (_ok_row(rank=float("inf")), "rank"),
    (_ok_row(seq_len=2**70), "seq_len is 1180591620717411303424"),
    (_ok_row(rank=2**70), "rank is"),
    (_ok_row(batch=2**70), "batch is"),
    (_ok_row(tokens_per_s=float("inf")), "tokens_per_s is inf"),
    (_ok_row(time_ms=float("nan")), "an ok record with time_ms nan"),
    (_ok_row(time_ms=None), "an ok record with time_ms nan"),
    (_ok_row(time_ms=-1.0), "time_ms is -1.0"),
    (_ok_row(peak_mem_mib=float("-inf")), "peak_mem_mib"),
    (_ok_row(seq_len=0), "seq_len is 0"),
    (_ok_row(batch=-4), "batch is -4"),
    (_ok_row(mode="sideways"), "unknown mode 'sideways'"),
    (_ok_row(dtype="fp8"), "unknown dtype 'fp8'"),
    (_ok_row(check="maybe"), "unknown check 'maybe'"),
    (_ok_row(device_index=-7), "device_index is -7"),
    (_ok_row(mechanism=""), "mechanism is empty"),
    (_ok_row(cache_mib=-1.0), "cache_mib is -1.0"),
    (_ok_row(cache_mib=float("inf")), "cache_mib is inf"),
    (_ok_row(cache_mib="lots"), "could not convert"),
    ('{"started": {"mechanism": "m", "mode": "fwd", "batch": 1, "heads": 1, "seq_len": '
     'Infinity, "head_dim": 1, "dtype": "fp32", "decay": true}}', "seq_len"),
    ('{"started": null}', "not a case (a JSON null)"),
])
def test_impossible_values_make_a_damaged_line_not_a_record(tmp_path, line, why):
    two_records(tmp_path)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write(line + "\n")
    df = records.load(tmp_path)
    assert len(df) == 2 and 512 not in df["seq_len"].tolist()
    assert len(df.attrs["problems"]) == 1 and df.attrs["problems"][0].startswith("line 3: ")
    assert why in df.attrs["problems"][0]
    records.finalize(tmp_path)  # no OverflowError writing the tables


def test_a_possible_record_with_infinity_free_values_still_reads(tmp_path):
    two_records(tmp_path)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write(_ok_row() + "\n")
    df = records.load(tmp_path)
    assert 512 in df["seq_len"].tolist() and not df.attrs["problems"]


def test_a_decode_record_reads_with_the_cache_it_kept(tmp_path):
    two_records(tmp_path)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write(_ok_row(mode="decode", cache_mib=16.0) + "\n")
    df = records.load(tmp_path)
    assert not df.attrs["problems"]
    decode = df[df["mode"] == "decode"]
    assert decode["cache_mib"].tolist() == [16.0] and df["cache_mib"].isna().sum() == 2


def test_an_invalid_utf8_line_is_reported_as_such(tmp_path):
    two_records(tmp_path)
    with open(tmp_path / "records.jsonl", "ab") as f:
        f.write(b'{"mechanism": "\xff\xfe"}\n')
    problems = records.load(tmp_path).attrs["problems"]
    assert problems == ["line 3: not UTF-8 text (byte 0xff at column 16)"]


def test_duplicates_name_their_cases_and_fail_strict(tmp_path):
    make_run(tmp_path, [Record(CASE, "linear", "cpu", "ok", time_ms=1.5, tokens_per_s=1.0),
                        Record(CASE, "linear", "cpu", "ok", time_ms=150.0, tokens_per_s=1.0)])
    df = records.load(tmp_path)
    assert df["time_ms"].tolist() == [150.0]
    assert df.attrs["duplicated_cases"] == [
        "linear-masked fwd b1-h2-n128-d16-fp32-decay (2 records: ok 1.5 ms, ok 150 ms)"]
    with pytest.raises(UsageError, match="1 case.s. recorded more than once.*linear-masked fwd "
                                         "b1-h2-n128-d16-fp32-decay"):
        records.load(tmp_path, strict=True)
