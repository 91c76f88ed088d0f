import pytest

from attnbench.errors import UsageError
from attnbench.spec import PRESETS, SweepSpec, build_spec, expand


def test_paper_preset_is_the_official_benchmark_shape():
    spec = build_spec("paper", "cuda")
    assert spec.batch == (4,) and spec.heads == (32,) and spec.head_dims == (128,)
    assert spec.dtypes == ("bf16",) and spec.modes == ("fwd", "bwd")
    assert spec.seq_lens[0] == 1024 and spec.seq_lens[-1] == 128 * 1024 and spec.decay


def test_default_preset_by_device():
    assert build_spec(None, "cpu").preset == "cpu"
    assert build_spec(None, "cpu").modes == ("fwd", "bwd", "decode")  # a small decode set too
    assert build_spec(None, "cuda").preset == "quick"


def test_explicit_options_override_preset():
    spec = build_spec("paper", "cpu", seq_lens="128,256", dtypes="fp32", decay=False,
                      mechanisms="linear-masked")
    assert spec.seq_lens == (128, 256) and spec.dtypes == ("fp32",) and spec.decay is False
    assert spec.batch == (4,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="huge"), "unknown preset 'huge'"),
    (dict(dtypes="fp8"), "unknown dtype 'fp8'"),
    (dict(modes="fwd,back"), "unknown mode 'back'"),
    (dict(mechanisms="nosuch"), "unknown mechanism or family 'nosuch'"),
    (dict(seq_lens="1k.."), "bad range"),
    (dict(batch="0"), "positive"),
    (dict(heads="abc"), "bad size"),
    (dict(dtypes=","), "empty --dtype list"),
    (dict(max_case_seconds=0), "must be a positive number"),
    (dict(max_case_seconds=float("nan")), "must be a positive number, not nan"),
    (dict(line_seconds=-1), "--line-seconds must be a number >= 0"),
    (dict(value_dims="0"), "positive"),
])
def test_bad_input_is_a_usage_error(kwargs, message):
    args = dict(preset="cpu", device="cpu")
    args.update(kwargs)
    with pytest.raises(UsageError, match=message):
        build_spec(**args)


def test_expand_order_and_decay_per_mechanism():
    spec = build_spec("cpu", "cpu", mechanisms="linear-masked,linear-cumsum", seq_lens="128,256",
                      modes="fwd,bwd")
    cases = expand(spec)
    assert len(cases) == 2 * 2 * 2
    # Each line's lengths run shortest first, so an OOM stops the longer ones.
    assert [c.seq_len for c in cases[:2]] == [128, 256]
    assert {c.decay for c in cases if c.mechanism == "linear-masked"} == {True}
    assert {c.decay for c in cases if c.mechanism == "linear-cumsum"} == {False}


def test_spec_json_round_trip():
    spec = build_spec("quick", "cuda")
    assert SweepSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("name, device", [("cpu", "cpu"), ("quick", "cuda"), ("full", "cuda"),
                                          ("paper", "cuda")])
def test_every_preset_expands_to_its_lengths_on_its_device(name, device):
    spec = build_spec(name, device)
    cases = expand(spec)
    assert spec.preset == name and cases
    assert sorted({c.seq_len for c in cases}) == list(spec.seq_lens)
    assert {c.mode for c in cases} == set(spec.modes)
    assert set(PRESETS) == {"cpu", "quick", "full", "paper"}  # a new preset gets a line above


def test_the_paper_preset_is_the_shape_the_paper_figures_draw():
    from attnbench.paper.selection import PAPER_SHAPE

    spec = build_spec("paper", "cuda")
    assert (spec.batch, spec.heads, spec.head_dims, spec.dtypes) == (
        (PAPER_SHAPE["batch"],), (PAPER_SHAPE["heads"],), (PAPER_SHAPE["head_dim"],),
        (PAPER_SHAPE["dtype"],))
    assert (spec.seq_lens[0], spec.seq_lens[-1]) == (1024, 128 * 1024)  # the README's 1k..128k


def test_value_dims_default_to_the_head_dim_and_multiply_the_grid():
    same = expand(build_spec("cpu", "cpu", mechanisms="linear-masked", head_dims="16,32",
                             seq_lens="128", modes="fwd"))
    assert [(c.head_dim, c.value_dim) for c in same] == [(16, 16), (32, 32)]
    other = expand(build_spec("cpu", "cpu", mechanisms="linear-masked", head_dims="16",
                              value_dims="8,24", seq_lens="128", modes="fwd"))
    assert [(c.head_dim, c.value_dim) for c in other] == [(16, 8), (16, 24)]


def test_specs_of_schema_1_runs_still_read():
    old = {k: v for k, v in build_spec("quick", "cuda").to_json().items()
           if k not in ("value_dims", "line_seconds")}
    spec = SweepSpec.from_json(old)
    assert spec.value_dims == () and spec.line_seconds == 0.0


def test_plain_run_on_a_gpu_is_our_kernels_beside_flash2_cudnn_and_the_cumsum_reference():
    """Issue 21, the first minute on a GPU: the quick preset leaves the slow starters out."""
    from attnbench.spec import left_out

    spec = build_spec(None, "cuda")
    assert spec.preset == "quick"
    names = {c.mechanism for c in expand(spec)}
    assert names == {"lightning2", "lightning1", "flash2", "sdpa-cudnn", "linear-cumsum"}
    assert {"peer-fla-chunk", "peer-lightning-attn"} <= set(left_out(spec))
    assert not set(left_out(spec)) & names
    full = build_spec("full", "cuda")
    assert {"peer-fla-chunk", "peer-lightning-attn"} <= {c.mechanism for c in expand(full)}
    assert (full.seq_lens, full.batch, full.heads) == (spec.seq_lens, spec.batch, spec.heads)
    assert left_out(full) == [] and left_out(build_spec("quick", "cuda", mechanisms="all")) == []
    assert left_out(build_spec(None, "cpu")) == []  # the cpu preset runs every CPU mechanism
