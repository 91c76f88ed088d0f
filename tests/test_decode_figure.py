"""attnbench/decode_figure.py: the decode figure and what its records say (crossover, ratio,
memory of cache against state), on records made on the spot."""

import pytest
from fakes import make_case

from attnbench import records
from attnbench.decode_figure import decode_figure, decode_findings, decode_rows
from attnbench.errors import UsageError
from attnbench.plots import save
from attnbench.records import Record

CONTEXTS = [1024 * 2**i for i in range(5)]  # 1k..16k


def rec(mech, family, batch, n, ms, cache_mib, status="ok", heads=32):
    case = make_case(mech, "decode", batch=batch, heads=heads, seq_len=n, head_dim=128,
                     dtype="bf16", decay=family == "linear")
    if status != "ok":
        return Record(case, family, "cuda", status, reason="why not")
    return Record(case, family, "cuda", "ok", time_ms=ms, tokens_per_s=batch / (ms / 1e3),
                  cache_mib=cache_mib, gbps=100.0, check="pass")


def frame(linear_ms=0.05, contexts=CONTEXTS):
    """lightning2 flat; two softmax backends linear in the context, the faster one crossing
    lightning2 between 2k and 4k at batch 8; flash2 unsupported; a fwd record beside."""
    recs = []
    for b in (1, 8):
        state = b * 32 * 128 * 128 * 4 / 2**20
        for n in contexts:
            kv = b * 32 * (n + 1) * 256 * 2 / 2**20
            recs.append(rec("lightning2", "linear", b, n, linear_ms, state))
            recs.append(rec("sdpa-flash", "softmax", b, n, 0.015 * n / 1024 * (b / 8 + 0.5), kv))
            recs.append(rec("sdpa-math", "softmax", b, n, 0.1 * n / 1024, kv))
            recs.append(rec("flash2", "softmax", b, n, 0, 0, status="unsupported"))
    recs.append(Record(make_case("lightning2", "fwd", heads=32, head_dim=128), "linear", "cuda",
                       "ok", time_ms=1.0))
    return records.to_frame(recs)


def test_findings_say_crossover_ratio_and_memory():
    lines = decode_findings(frame())
    at8 = [line for line in lines if line.startswith("batch 8: lightning2 decodes")]
    # batch 8: flash at 0.0225 ms per 1k: 0.0225, 0.045 (1k, 2k) < 0.05 < 0.09 (4k): from 4k
    assert at8 == ["batch 8: lightning2 decodes faster than the fastest softmax step from "
                   "context 4k; at 16k 7.2x (50 us against sdpa-flash 360 us), 2,048 MiB of KV "
                   "cache against 16 MiB of state (128x)"]
    flat = [line for line in lines if line.startswith("batch 1: lightning2 step")]
    assert flat == ["batch 1: lightning2 step 50 us..50 us from context 1k to 16k (slowest / "
                    "fastest 1.000), 100 GB/s by its byte model"]
    assert any("batch 1: lightning2 decodes faster than the fastest softmax step from context "
               "8k" in line for line in lines)


def test_findings_give_128k_and_the_longest_context():
    lines = decode_findings(frame(contexts=[1024 * 2**i for i in range(10)]))  # 1k..512k
    at8 = next(line for line in lines if line.startswith("batch 8: lightning2 decodes"))
    assert "; at 128k 57.6x (50 us against sdpa-flash 2.88 ms), 16,384 MiB" in at8
    assert at8.endswith("; at 512k 230x (50 us against sdpa-flash 11.5 ms), 65,536 MiB of KV "
                        "cache against 16 MiB of state (4,096x)")


def test_findings_when_the_state_never_wins_or_always_does():
    slow = decode_findings(frame(linear_ms=10.0))
    assert any("at no context measured" in line for line in slow)
    fast = decode_findings(frame(linear_ms=0.001))
    assert all("(every context measured)" in line for line in fast if "decodes" in line)


def test_figure_a_row_per_batch_unsupported_named(tmp_path):
    df = frame()
    fig = decode_figure(df, title="run: GPU")
    axes = fig.get_axes()
    assert len(axes) == 4  # tokens/s and memory for batch 1 and 8
    assert axes[0].get_title().startswith("batch 1: tokens / s generated")
    assert axes[3].get_title() == "batch 8: KV cache or state kept, MiB (equal ones overlap)"
    assert {line.get_label() for line in axes[0].get_lines()} >= {"lightning2", "sdpa-flash"}
    title = fig._suptitle.get_text()
    assert "flash2" in title and "heads 32" in title and "batch 1" not in title
    assert save(fig, tmp_path, "decode", ("png",))[0].stat().st_size > 10_000


def test_no_decode_records_is_one_clear_error():
    df = records.to_frame([Record(make_case("lightning2", "fwd"), "linear", "cuda", "ok",
                                  time_ms=1.0)])
    with pytest.raises(UsageError, match="no decode records"):
        decode_rows(df)
    assert decode_findings(df) == []
