"""The softmax field in the registry: what each entry declares, what available() says with
packages absent, broken or of the wrong build, and how refusals become records."""

import importlib.machinery
import subprocess
import sys
import types

import pytest
import torch
from fakes import fake, make_case

from attnbench import registry
from attnbench.check import check
from attnbench.runner import Sweep
from attnbench.spec import build_spec, expand

SOFTMAX = ["softmax-naive", "sdpa-math", "flash2", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient",
           "xformers", "sdpa-ring"]


def test_softmax_field_is_registered():
    assert [m.name for m in registry.MECHANISMS if m.family == "softmax"] == SOFTMAX
    assert registry.get("flash2").layout == registry.get("xformers").layout == "bnhd"
    for name in ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient"):
        assert registry.get(name).layout == "bhnd"


def test_registry_import_reads_nothing_from_the_environment():
    code = ("import sys, attnbench.registry; "
            "loaded = [m for m in ('flash_attn', 'xformers', 'attnbench.baselines.softmax') "
            "if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name,n,d,dtype,expected", [
    ("flash2", 1024, 128, "fp32", "does not take fp32"),
    ("flash2", 1024, 100, "bf16", "8..256, multiple of 8, not 100"),
    ("flash2", 1024, 512, "fp16", "not 512"),
    ("flash2", 1024, 256, "bf16", ""),
    ("sdpa-flash", 1024, 12, "fp16", "multiple of 8, not 12"),
    ("sdpa-cudnn", 1024, 128, "fp32", "does not take fp32"),
    ("sdpa-cudnn", 1024, 256, "bf16", ""),
    ("sdpa-efficient", 1024, 12, "fp16", "multiple of 8 for fp16, not 12"),
    ("sdpa-efficient", 1024, 12, "fp32", ""),
    ("sdpa-efficient", 1024, 6, "fp32", "multiple of 4 for fp32, not 6"),
    ("xformers", 1024, 12, "bf16", "multiple of 8 for bf16, not 12"),
    ("xformers", 1024, 64, "fp32", ""),
])
def test_declared_limits(name, n, d, dtype, expected):
    reason = registry.get(name).unsupported_reason(
        make_case(name, seq_len=n, head_dim=d, dtype=dtype, decay=False))
    assert (expected in reason) if expected else reason == ""


def test_flop_model_is_flash_attentions():
    for name in SOFTMAX:
        case = make_case(name, batch=2, heads=3, seq_len=8, head_dim=16)
        assert registry.get(name).flops(case) == 4 * 2 * 3 * 8 * 8 * 16 / 2


@pytest.fixture
def gpu_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_flash2_says_which_will_run(gpu_visible, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    avail = registry.get("flash2").available("cuda")
    assert avail and avail.reason.startswith("runs PyTorch SDPA's flash backend")
    assert avail.reason.endswith("flash-attn not installed")
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    avail = registry.get("flash2").available("cuda")
    assert not avail and "built without FlashAttention" in avail.reason
    assert not registry.get("sdpa-flash").available("cuda")

    fake_module = types.ModuleType("flash_attn")
    fake_module.__version__, fake_module.flash_attn_func = "2.8.3", lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "flash_attn", fake_module)
    avail = registry.get("flash2").available("cuda")
    assert avail and avail.reason == "runs flash-attn 2.8.3 flash_attn_func"
    case = make_case("flash2", batch=1, heads=2, seq_len=64, head_dim=64, dtype="bf16")
    impl = registry.get("flash2").impl_of(case)
    assert impl == "flash-attn 2.8.3 flash_attn_func"


def test_other_mechanisms_have_nothing_to_add(gpu_visible):
    avail = registry.get("sdpa-efficient").available("cuda")
    assert avail and avail.reason == ""


def test_cudnn_probe(gpu_visible, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    avail = registry.get("sdpa-cudnn").available("cuda")
    assert not avail and "without cuDNN" in avail.reason


def xformers_module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


def test_xformers_absent_or_built_for_another_torch(gpu_visible, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # find_spec then finds nothing
    avail = registry.get("xformers").available("cuda")
    assert not avail and avail.reason.startswith("xformers not installed (pip install")

    class Info:
        torch_version, python_version = "2.10.0+cu128", sys.version.split()[0]

    class Invalid(Exception):
        build_info = Info()

    cpp_lib = xformers_module("xformers._cpp_lib", _cpp_library_load_exception=Invalid())
    monkeypatch.setitem(sys.modules, "xformers",
                        xformers_module("xformers", __version__="0.0.35", _cpp_lib=cpp_lib))
    monkeypatch.setitem(sys.modules, "xformers._cpp_lib", cpp_lib)
    avail = registry.get("xformers").available("cuda")
    assert not avail and avail.reason == (
        f"xformers 0.0.35 was built for torch 2.10.0+cu128, this is torch {torch.__version__}: "
        "its CUDA ops do not load")


def test_math_backend_passes_the_float64_check():
    for dtype in ("fp32", "fp16", "bf16"):
        case = make_case("sdpa-math", head_dim=48, dtype=dtype, decay=False)
        result = check(registry.get("sdpa-math"), case, "cpu")
        assert result.passed, (dtype, result)


def test_a_refusing_backend_is_recorded_unsupported_with_its_reason(install):
    from attnbench.baselines.softmax import sdpa_backend_fn

    # SDPA's efficient backend does not exist on the CPU: PyTorch refuses every call.
    install(fake("sdpa-efficient-on-cpu", sdpa_backend_fn("EFFICIENT_ATTENTION"),
                 family="softmax", decay=False, oracle="softmax-naive"))
    spec = build_spec("cpu", "cpu", mechanisms="sdpa-efficient-on-cpu", seq_lens="64",
                      modes="fwd", batch="1", heads="2", head_dims="16")
    out = []
    Sweep(spec, out.append).run(expand(spec), [])
    (rec,) = out
    assert rec.status == "unsupported"
    assert "NotImplementedError: SDPA's efficient backend refuses" in rec.reason
