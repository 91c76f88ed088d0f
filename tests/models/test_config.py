"""Size presets: honest parameter counts (on the meta device), shapes, FLOPs, bad input."""

import pytest
import torch

from attnbench.errors import UsageError
from attnbench.models import (
    DEFAULT_MECHANISM,
    SIZES,
    attention_flops_per_token,
    build_model,
    config_for,
    count_params,
    llama_ffn_dim,
    matmul_params,
    train_flops_per_token,
    train_memory_floor,
    unsupported_reason,
)


@pytest.mark.parametrize("family", ["llama", "tnl"])
@pytest.mark.parametrize("size", ["0.4b", "1b", "3b"])
def test_presets_land_within_15_percent_of_their_name(family, size):
    model = build_model(family, size, DEFAULT_MECHANISM[family], "meta", "bf16")
    assert all(p.is_meta for p in model.parameters())
    params = count_params(model)
    assert abs(params / SIZES[size].nominal - 1) < 0.15, f"{family}-{size}: {params:,}"


@pytest.mark.parametrize("family", ["llama", "tnl"])
@pytest.mark.parametrize("size", list(SIZES))
def test_matmul_params_are_the_linear_weights(family, size):
    model = build_model(family, size, DEFAULT_MECHANISM[family], "meta")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(model.config) == linear


def test_tnl_ties_embeddings_and_llama_does_not():
    tnl = build_model("tnl", "tiny", "linear-masked", "meta")
    llama = build_model("llama", "tiny", "sdpa-math", "meta")
    assert tnl.lm_head.weight is tnl.embed.weight
    assert llama.output.weight is not llama.tok_embeddings.weight


@pytest.mark.parametrize("size", ["0.4b", "1b", "3b"])
def test_paper_sizes_follow_llamas_ffn_rule_and_head_dim_128(size):
    shape = SIZES[size]
    assert shape.ffn_dim == llama_ffn_dim(shape.dim)
    assert shape.dim // shape.n_heads == 128


def test_lrpe_doubles_the_first_tnl_layers_qk_head_dim():
    config = config_for("tnl", "0.4b")
    assert config.attention_dims() == [(256, 128)] + [(128, 128)] * 23
    assert set(config_for("llama", "0.4b").attention_dims()) == {(128, 128)}


def test_flops_per_token():
    llama, tnl = config_for("llama", "0.4b"), config_for("tnl", "0.4b")
    # Softmax attention: H * N * (D + E) per token per layer, linear in N.
    assert attention_flops_per_token(llama, 1024) == 24 * 8 * 1024 * 256
    assert attention_flops_per_token(llama, 2048) == 2 * attention_flops_per_token(llama, 1024)
    # Linear attention: 4 * H * D * E per token per layer, whatever N.
    assert attention_flops_per_token(tnl, 1024) == 4 * 8 * (256 * 128 + 23 * 128 * 128)
    assert train_flops_per_token(tnl, 1024) == train_flops_per_token(tnl, 131072)
    assert train_flops_per_token(llama, 1024) == (6 * matmul_params(llama)
                                                  + 3 * attention_flops_per_token(llama, 1024))


def test_bad_family_size_policy_and_mechanism_are_usage_errors():
    with pytest.raises(UsageError, match="unknown model 'gpt'.*llama, tnl"):
        build_model("gpt", "tiny", "sdpa-math", "meta")
    with pytest.raises(UsageError, match="unknown model size '7b'.*tiny, 0.4b, 1b, 3b"):
        build_model("llama", "7b", "sdpa-math", "meta")
    with pytest.raises(UsageError, match="dtype policy 'fp16'"):
        build_model("llama", "tiny", "sdpa-math", "meta", "fp16")
    with pytest.raises(UsageError, match="unknown mechanism 'nosuch'"):
        build_model("llama", "tiny", "nosuch", "meta")


def test_unsupported_reason_checks_every_layers_head_dims():
    tnl = config_for("tnl", "0.4b")
    assert unsupported_reason(tnl, "lightning2", 4096) == ""
    wide = tnl.with_(dim=2048, n_heads=8)  # head dim 256, LRPE layer 512
    assert "512" in unsupported_reason(wide, "lightning2", 4096)
    llama = config_for("llama", "0.4b")
    assert "fp32" in unsupported_reason(llama, "flash2", 4096, "fp32")


def test_seeded_build_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("tnl", "tiny", "linear-masked", "cpu", "fp32", seed=7)
    b = build_model("tnl", "tiny", "linear-recurrent", "cpu", "fp32", seed=7)
    assert torch.rand(1) == before
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert all(torch.isfinite(p).all() for p in a.parameters())  # nothing left uninitialised


def test_memory_floor_of_the_3b_presets():
    """16 B a parameter (fp32 weights, grads, two AdamW moments) + 2 B of bf16 copies."""
    tnl = count_params(build_model("tnl", "3b", "lightning2", "meta"))
    assert train_memory_floor(tnl, "bf16") == 18 * tnl
    assert 50e9 < train_memory_floor(tnl, "bf16") < 55e9  # fits an 80 GB H100, barely
    assert train_memory_floor(tnl, "fp32") == 16 * tnl
