"""paper/sentences.py: every finding computed from the data (SYNTHETIC frames).

The frame's runtimes (x = n / 1k): Lightning-2 0.55x + 0.1, Lightning-1 0.05x^2 + 0.3x,
FlashAttention-2 0.15x^2 + 0.05x, Vanilla 0.3x^2, naive cumsum 2.8x (backward 2.5 times).
"""

from frames import paper_frame

from attnbench.paper import sentences


def test_overtaking_is_read_off_the_data():
    found = sentences.findings(paper_frame())
    # Lightning-2 = FlashAttention-2 at x = 3.5 and = Lightning-1 at x = 5.4
    assert ("In forward, Lightning-2 overtakes FlashAttention-2 and Vanilla between 2k and 4k, "
            "Lightning-1 between 4k and 8k.") in found
    assert ("In forward, Lightning-1 overtakes Vanilla between 1k and 2k, FlashAttention-2 "
            "between 2k and 4k.") in found
    moved = sentences.findings(paper_frame(flash_scale=0.25))  # a 4x faster FlashAttention-2
    assert ("In forward, Lightning-2 overtakes Vanilla between 2k and 4k, Lightning-1 between "
            "4k and 8k, FlashAttention-2 between 8k and 16k.") in moved


def test_no_overtaking_and_grouped_pairs():
    found = sentences.findings(paper_frame(mechanisms=("lightning2", "linear-cumsum")))
    assert "In forward, no mechanism overtakes another (1k..128k)." in found


def test_panels_times_growth_tokens_memory_limits():
    df = paper_frame()
    panels = sentences.findings_by_panel(df)
    assert list(panels) == ["run", "forward runtime", "backward runtime", "forward memory",
                            "backward memory"]
    fwd = "\n".join(panels["forward runtime"])
    assert ("Forward runtime at 128k, least first: Lightning-2 70.5 ms, Lightning-1 858 ms "
            "(12x), FlashAttention-2 2,464 ms (35x).") in fwd
    assert "Lightning-2 n^1.0 over 4k..128k" in fwd and "Vanilla n^2.0 over 4k..8k" in fwd
    l2 = df.query("mechanism == 'lightning2' and mode == 'fwd' and seq_len >= 4096")
    spread = 100 * (1 - l2["tokens_per_s"].min() / l2["tokens_per_s"].max())
    assert f"Lightning-2 flat within {spread:.0f}% over 4k..128k" in fwd
    assert "Lightning-1 falls" in fwd
    mem = panels["forward memory"]
    assert "naive cumsum runs out of memory in forward from 32k (longest measured: 16k)." in mem
    assert "Vanilla runs out of memory in forward from 16k (longest measured: 8k)." in mem
    at = df.query("mechanism == 'lightning2' and mode == 'bwd' and seq_len == 131072")
    assert f"Lightning-2 {at['peak_mem_mib'].item():,.0f} MiB" in next(
        s for s in panels["backward memory"]
        if s.startswith("Backward peak memory at 128k, least first: "))


def test_absent_skipped_and_failed():
    df = paper_frame(mechanisms=("lightning2", "lightning1"), fail_check=("lightning1", "bwd"),
                     skip_from=("lightning1", 65536))
    found = sentences.findings(df)
    assert found[0].startswith("Not in this run, so not compared: FlashAttention-2 (flash2)")
    assert not any("FlashAttention-2 " in s for s in found[1:])
    assert any(s.startswith("Lightning-1 forward has no measurement from 64k (longest "
                            "measured: 32k), status skipped: predicted 40 s") for s in found)
    assert any(s.startswith("Lightning-1 failed its correctness check in backward at 1k, 2k")
               for s in found)


def test_nothing_of_the_paper_and_tokens_of_everyone():
    df = paper_frame(mechanisms=("xformers",))
    assert len(sentences.findings(df)) == 1
    (fwd, bwd) = sentences.tokens_findings(df)
    assert fwd.startswith("Forward tokens/s: xformers falls") and bwd.startswith("Backward")
