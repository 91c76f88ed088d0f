"""attnbench/modes.py: one Mode object per mode, asked instead of comparing mode names."""

import math

import pytest
from fakes import make_case

from attnbench import modes, registry
from attnbench.errors import UsageError
from attnbench.prepare import call_flops, prepare_call


def test_every_mode_is_known_by_name_and_unknown_ones_are_refused():
    assert list(modes.MODES) == ["fwd", "bwd", "fwdbwd", "decode", "train"]
    assert [m.name for m in modes.RUN_MODES] == list(registry.MODES)  # run --modes
    for name, mode in modes.MODES.items():
        assert modes.get(name) is mode and modes.of(make_case(mode=name)) is mode
        assert mode.words
    with pytest.raises(UsageError, match="unknown mode 'sideways'; choose from fwd, bwd"):
        modes.get("sideways")


@pytest.mark.parametrize("mode", modes.OPERATOR_MODES, ids=lambda m: m.name)
def test_operator_modes_use_the_mechanisms_models(mode):
    mech = registry.get("linear-masked")
    case = make_case(mech.name, mode.name, batch=1, heads=2, seq_len=32, head_dim=8)
    assert mode.flops(mech, case) == call_flops(mech, case) == mech.mode_flops(case)
    assert mode.bytes(mech, case) == mech.traffic(case)
    assert mode.memory_floor(mech, case) == mech.memory(case)
    prepared = prepare_call(mech, case, "cpu")
    assert prepared.min_reps == mode.min_reps == 1
    assert all(x.requires_grad == mode.grads for x in prepared.inputs)
    small = mode.check_case(case)
    assert (small.mode, small.seq_len, small.batch) == ("fwdbwd", 100, case.batch)


def test_a_mechanism_without_backward_takes_forward_only():
    mech = registry.Mechanism(name="fwd-only", family="linear", load=lambda: None, summary="",
                              devices=("cpu",), backward=False)
    for mode in modes.OPERATOR_MODES:
        reason = mode.unsupported_reason(mech, make_case("fwd-only", mode.name, head_dim=32))
        assert reason == ("" if mode is modes.FWD else "fwd-only has no backward pass")


def test_the_training_step_is_the_models():
    mech = registry.get("linear-masked")
    case = make_case(mech.name, "train", batch=2, heads=2, seq_len=64, head_dim=8).with_(
        model="tnl", size="tiny")
    train = modes.TRAIN
    assert math.isnan(train.bytes(mech, case))  # no byte model of a whole model
    assert train.flops(mech, case) > mech.mode_flops(case.with_(mode="fwdbwd"))
    assert train.memory_floor(mech, case) > 0
    small = train.check_case(case)  # the model at batch 1, without checkpointing
    assert (small.mode, small.batch, small.model, small.size) == ("fwdbwd", 1, "tnl", "tiny")
    assert train.min_reps == modes.TRAIN_MIN_STEPS and train.follows_length == ("batch",)


def test_words_in_tables_and_figures_come_from_the_mode():
    default = ("tokens_per_s", "tokens/s", str, True)
    assert modes.metric("fwd", "tokens", default) is default
    assert modes.metric("no-such-mode", "tokens", default) is default  # an old record's
    assert modes.metric("train", "tokens", default)[1].startswith("TGS")
    assert modes.figures(["fwd", "bwd"]) == [] and modes.figures(["train", "fwd"]) == ["tgs"]
    assert modes.figures(["decode", "fwd"]) == ["decode"]
    assert modes.metric("decode", "tokens", default)[1].startswith("tokens/s generated")
    assert modes.metric("decode", "memory", default)[0] == "cache_mib"


@pytest.mark.parametrize("attention_err, model_err, kept", [
    (1e-3, 1e-2, "model"),  # both pass: the one nearer its tolerance
    (5e-3, 1e-4, "attention"),
    (1.0, 1e-4, "attention"),  # a failure is kept whatever the other says
    (1e-4, float("nan"), "model"),
])
def test_a_training_step_is_checked_inside_and_as_a_whole(monkeypatch, attention_err,
                                                            model_err, kept):
    from attnbench import check

    seen = {}

    def attention(mech, case, device):
        seen["attention"] = case
        return check.CheckResult(attention_err, 1e-2, 0.0)

    def model(mech, case, device):
        seen["model"] = case
        return check.CheckResult(model_err, 2e-2, 0.0)

    monkeypatch.setattr(check, "check", attention)
    monkeypatch.setattr(check, "check_model", model)
    case = make_case("linear-masked", "train", batch=4, heads=2, seq_len=64, head_dim=8).with_(
        model="tnl", size="tiny", checkpointing=True)
    result = modes.TRAIN.check(registry.get("linear-masked"), modes.TRAIN.check_case(case),
                               "cpu")
    want = model_err if kept == "model" else attention_err
    assert result.max_rel_err == want or (result.max_rel_err != result.max_rel_err
                                          and want != want)
    assert (seen["attention"].model, seen["attention"].batch) == ("", 1)
    assert (seen["model"].model, seen["model"].size, seen["model"].checkpointing) == (
        "tnl", "tiny", False)
