"""baselines/softmax.py on the CPU: the references against float64, SDPA's refusals turned
into NotImplementedError, layouts, and the flash-attn / xformers choices with fake packages."""

import importlib
import importlib.machinery
import platform
import sys
import types
import warnings

import pytest
import torch
from attnbench.baselines import softmax

from attnbench.check import rel_err


def qkv(shape=(2, 3, 37, 16), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3)]


def bnhd(x):
    return x.transpose(1, 2).contiguous()


def module(name, **attrs):
    """A fake package module that import machinery and find_spec accept."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


# --- references ---------------------------------------------------------------------------


def test_naive_is_causal_softmax():
    q, k, v = qkv()
    o = softmax.softmax_naive(q, k, v)
    # Row i attends to 0..i only: changing the last key/value leaves earlier rows alone.
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 1.0
    v2[:, :, -1] += 1.0
    o2 = softmax.softmax_naive(q, k2, v2)
    assert torch.equal(o[:, :, :-1], o2[:, :, :-1]) and not torch.equal(o[:, :, -1], o2[:, :, -1])
    assert torch.allclose(o[:, :, 0], v[:, :, 0])  # the first row sees only itself


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_sdpa_math_matches_the_float64_oracle(dtype):
    q, k, v = qkv(shape=(2, 3, 77, 48))
    ref = softmax.softmax_naive(q, k, v)
    got = softmax.sdpa_backend_fn("MATH")(*(x.to(dtype) for x in (q, k, v)))
    assert got.dtype == dtype
    assert rel_err(got, ref) < (1e-12 if dtype == torch.float64 else 1e-5)


def test_softmax_takes_no_decay():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="no decay"):
        softmax.softmax_naive(q, k, v, torch.ones(3))
    with pytest.raises(ValueError, match="no decay"):
        softmax.sdpa_backend_fn("MATH")(q, k, v, torch.ones(3))


@pytest.mark.parametrize("backend", ["MATH", "FLASH_ATTENTION"])
def test_bnhd_layout_gives_the_bhnd_answer(backend):
    q, k, v = qkv(dtype=torch.float32)
    o = softmax.sdpa_backend_fn(backend)(q, k, v)
    o_bnhd = softmax.sdpa_backend_fn(backend, layout="bnhd")(bnhd(q), bnhd(k), bnhd(v))
    assert o_bnhd.shape == (2, 37, 3, 16)
    torch.testing.assert_close(o_bnhd.transpose(1, 2), o)
    with pytest.raises(ValueError, match="layout"):
        softmax.sdpa_backend_fn("MATH", layout="nhbd")


# --- SDPA refusals ----------------------------------------------------------------------------


def test_real_refusal_is_not_implemented_with_pytorch_reason():
    # The CPU flash kernel refuses a value head dim unlike the query's, as CUDA's does.
    q, k, _ = qkv(dtype=torch.float32)
    v = torch.randn(2, 3, 37, 8)
    with warnings.catch_warnings(), pytest.raises(NotImplementedError) as info:
        warnings.simplefilter("ignore")  # the first call's, as PyTorch emits them
        softmax.sdpa_backend_fn("FLASH_ATTENTION")(q, k, v)
    text = str(info.value)
    assert text.startswith("SDPA's flash backend refuses torch.float32 (2, 3, 37, 16) on cpu: ")
    assert "same last dimension" in text
    assert "Triggered internally" not in text and "not used because" not in text
    assert "\n" not in text


def test_backend_missing_on_this_device_is_not_implemented():
    q, k, v = qkv(dtype=torch.float32)
    with pytest.raises(NotImplementedError, match="efficient backend refuses .*No viable backend"):
        softmax.sdpa_backend_fn("EFFICIENT_ATTENTION")(q, k, v)


def fake_refusing_sdpa(calls, message="No available kernel.  Aborting execution."):
    """SDPA as CUDA torch refuses: every backend's reasons as warnings, then the error."""
    where = " (Triggered internally at /pytorch/aten/src/ATen/native/transformers/cuda/x.cpp:9.)"

    def sdpa(q, k, v, is_causal=False):
        calls.append(q.shape)
        for text in ("Memory efficient kernel not used because:",
                     "Memory efficient attention has been runtime disabled.",
                     "Flash attention kernel not used because:",
                     "Flash attention requires q,k,v to have the same last dimension and to be "
                     "less than or equal to 256. Got Query.size(-1): 512",
                     "Flash attention only supports gpu architectures in the range [sm80, sm121].",
                     "cuDNN attention kernel not used because:",
                     "cuDNN attention has been runtime disabled."):
            warnings.warn(text + where, UserWarning, stacklevel=2)
        raise RuntimeError(message)
    return sdpa


def test_refusal_keeps_only_the_pinned_backends_reasons(monkeypatch):
    calls = []
    monkeypatch.setattr(softmax.F, "scaled_dot_product_attention", fake_refusing_sdpa(calls))
    q, k, v = qkv(dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the first call's warnings reach the user as PyTorch's do
        with pytest.raises(NotImplementedError) as info:
            softmax.sdpa_backend_fn("FLASH_ATTENTION")(q, k, v)
    text = str(info.value)
    assert "Got Query.size(-1): 512; Flash attention only supports gpu architectures" in text
    assert "runtime disabled" not in text and "Triggered internally" not in text
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(calls) == 2  # the reasons come from a second call, on the failure path only


def test_cudnn_refusal_section_and_other_errors_pass_through(monkeypatch):
    calls = []
    monkeypatch.setattr(softmax.F, "scaled_dot_product_attention", fake_refusing_sdpa(calls))
    q, k, v = qkv(dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotImplementedError, match="cuDNN backend refuses .*runtime disabled"):
            softmax.sdpa_backend_fn("CUDNN_ATTENTION")(q, k, v)
    monkeypatch.setattr(softmax.F, "scaled_dot_product_attention",
                        fake_refusing_sdpa(calls, "CUDA error: an illegal memory access"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="illegal memory access"):
            softmax.sdpa_backend_fn("FLASH_ATTENTION")(q, k, v)


def test_success_calls_sdpa_once(monkeypatch):
    calls = []
    real = softmax.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(softmax.F, "scaled_dot_product_attention", counting)
    softmax.sdpa_backend_fn("MATH")(*qkv())
    assert calls == [1]


def test_sdpa_problem(monkeypatch):
    assert softmax.sdpa_problem("MATH") == ""
    assert softmax.sdpa_problem("EFFICIENT_ATTENTION") == ""
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    assert "built without FlashAttention" in softmax.sdpa_problem("FLASH_ATTENTION")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    assert "built without cuDNN" in softmax.sdpa_problem("CUDNN_ATTENTION")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 8907)
    assert "cuDNN 8907 is too old" in softmax.sdpa_problem("CUDNN_ATTENTION")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    assert softmax.sdpa_problem("CUDNN_ATTENTION") == ""


# --- FlashAttention-2 ---------------------------------------------------------------------


@pytest.fixture
def no_flash_attn(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ModuleNotFoundError


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """flash-attn 2.7.4 whose flash_attn_func computes the reference in (B, N, H, D)."""
    calls = []

    def flash_attn_func(q, k, v, causal=False):
        calls.append(dict(shape=tuple(q.shape), causal=causal))
        return bnhd(softmax.softmax_naive(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))

    monkeypatch.setitem(sys.modules, "flash_attn",
                        module("flash_attn", __version__="2.7.4", flash_attn_func=flash_attn_func))
    return calls


def test_flash2_without_flash_attn_runs_sdpa_flash_in_bnhd(no_flash_attn, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    q, k, v = qkv(dtype=torch.float32)
    fn = softmax.flash2_fn()
    assert fn.__name__ == "flash2_sdpa"
    o = fn(bnhd(q), bnhd(k), bnhd(v))  # the CPU flash kernel stands in for the CUDA one
    assert o.shape == (2, 37, 3, 16)
    assert rel_err(o.transpose(1, 2), softmax.softmax_naive(q, k, v)) < 1e-5
    choice = softmax.flash2_choice()
    assert choice.startswith("runs PyTorch SDPA's flash backend (FlashAttention ")
    assert choice.endswith(f"in torch {torch.__version__}): flash-attn not installed")
    impl = softmax.flash2_impl(1, 2, 64, 16, "bf16")
    assert impl.startswith(f"torch {torch.__version__} SDPA flash (FlashAttention ")
    assert softmax.flash2_problem() == ""


def test_flash2_without_flash_attn_or_torch_flash_is_unavailable(no_flash_attn, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    assert softmax.flash2_problem() == (
        f"flash-attn not installed, and torch {torch.__version__} was built without FlashAttention")


def test_flash2_with_flash_attn_calls_flash_attn_func_in_bnhd(fake_flash_attn, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    q, k, v = qkv(dtype=torch.float32)
    o = softmax.flash2_fn()(bnhd(q), bnhd(k), bnhd(v))
    assert fake_flash_attn == [dict(shape=(2, 37, 3, 16), causal=True)]
    torch.testing.assert_close(o.transpose(1, 2), softmax.softmax_naive(q, k, v))
    assert softmax.flash2_choice() == "runs flash-attn 2.7.4 flash_attn_func"
    assert softmax.flash2_impl(1, 2, 64, 16, "bf16") == "flash-attn 2.7.4 flash_attn_func"
    assert softmax.flash2_problem() == ""  # torch's own flash is not needed then
    with pytest.raises(ValueError, match="no decay"):
        softmax.flash2_fn()(q, k, v, torch.ones(3))


def test_flash2_falls_back_when_flash_attn_does_not_import(monkeypatch):
    real = importlib.import_module

    def broken(name, *args):
        if name == "flash_attn":
            raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDevice")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    assert softmax.flash2_fn().__name__ == "flash2_sdpa"
    choice = softmax.flash2_choice()
    assert "SDPA's flash backend" in choice
    assert "flash-attn does not import (ImportError: " in choice


def test_flash2_needs_flash_attn_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", module("flash_attn", __version__="1.0.9"))
    assert softmax.flash2_fn().__name__ == "flash2_sdpa"
    assert "flash-attn 1.0.9 has no flash_attn_func" in softmax.flash2_choice()


# --- xFormers -----------------------------------------------------------------------------


class BuildInfo:
    def __init__(self, torch_version, python_version):
        self.torch_version, self.python_version = torch_version, python_version


class InvalidLib(Exception):
    def __init__(self, build_info):
        super().__init__("xFormers can't load C++/CUDA extensions. xFormers was built for:\n ...")
        self.build_info = build_info


class Op:
    def __init__(self, name):
        self.NAME = name


@pytest.fixture
def fake_xformers(monkeypatch):
    """Install a fake xformers 0.0.35; returns a function that sets its load failure."""
    calls = []

    class LowerTriangularMask:
        pass

    def memory_efficient_attention(q, k, v, attn_bias=None):
        calls.append(dict(shape=tuple(q.shape), bias=attn_bias))
        if q.shape[-1] == 12:
            raise NotImplementedError(
                "No operator found for `memory_efficient_attention_forward` with inputs:\n"
                "     query       : shape=(1, 64, 2, 12) (torch.float16)\n"
                "     attn_bias   : <class 'LowerTriangularMask'>\n"
                "`fa2F@2.5.7-pt` is not supported because:\n"
                "    query.shape[-1] % 8 != 0\n"
                "`cutlassF-pt` is not supported because:\n"
                "    query.shape[-1] % 8 != 0\n"
                "    operator wasn't built - see `python -m xformers.info` for more info")
        return bnhd(softmax.softmax_naive(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))

    class Inputs:
        def __init__(self, query, key, value, attn_bias=None):
            self.query, self.key, self.value, self.attn_bias = query, key, value, attn_bias

    def dispatch_fw(inp, needs_gradient):
        calls.append(dict(dispatch=tuple(inp.query.shape), dtype=inp.query.dtype,
                          bias=inp.attn_bias))
        return Op("fa3F@2.8.0") if inp.query.dtype != torch.float32 else Op("cutlassF-pt")

    def dispatch_bw(inp, varlen_lse_packed):
        if inp.query.dtype == torch.float32:
            raise NotImplementedError("No operator found for `memory_efficient_attention_backward`")
        return Op("fa3B@2.8.0")

    cpp_lib = module("xformers._cpp_lib", _cpp_library_load_exception=None)
    attn_bias = module("xformers.ops.fmha.attn_bias", LowerTriangularMask=LowerTriangularMask)
    fmha = module("xformers.ops.fmha", attn_bias=attn_bias)
    mods = {
        "xformers": module("xformers", __version__="0.0.35", _cpp_lib=cpp_lib),
        "xformers._cpp_lib": cpp_lib,
        "xformers.ops": module("xformers.ops", LowerTriangularMask=LowerTriangularMask,
                               memory_efficient_attention=memory_efficient_attention, fmha=fmha),
        "xformers.ops.fmha": fmha,
        "xformers.ops.fmha.attn_bias": attn_bias,
        "xformers.ops.fmha.common": module("xformers.ops.fmha.common", Inputs=Inputs),
        "xformers.ops.fmha.dispatch": module("xformers.ops.fmha.dispatch",
                                             _dispatch_fw=dispatch_fw, _dispatch_bw=dispatch_bw),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)

    def fail(exc):
        cpp_lib._cpp_library_load_exception = exc

    fail.calls = calls
    fail.mask = LowerTriangularMask
    return fail


def test_xformers_built_for_another_torch_says_so_in_one_line(fake_xformers):
    fake_xformers(InvalidLib(BuildInfo("2.10.0+cu128", platform.python_version())))
    assert softmax.xformers_problem() == (
        f"xformers 0.0.35 was built for torch 2.10.0+cu128, this is torch {torch.__version__}: "
        "its CUDA ops do not load")


def test_xformers_python_is_named_only_when_torch_matches(fake_xformers):
    fake_xformers(InvalidLib(BuildInfo("2.10.0+cu128", "2.7.18")))
    assert "Python" not in softmax.xformers_problem()  # its ops are a torch library
    fake_xformers(InvalidLib(BuildInfo(torch.__version__, "2.7.18")))
    assert softmax.xformers_problem() == (
        f"xformers 0.0.35 was built for Python 2.7.18, this is Python "
        f"{platform.python_version()}: its CUDA ops do not load")


def test_xformers_load_failure_with_matching_versions_gives_the_cause(fake_xformers):
    failure = InvalidLib(BuildInfo(torch.__version__, platform.python_version()))
    failure.__cause__ = OSError("libcudart.so.12: cannot open shared object file")
    fake_xformers(failure)
    assert softmax.xformers_problem() == (
        "xformers 0.0.35 cannot load its CUDA ops (OSError: libcudart.so.12: cannot open shared "
        "object file)")
    fake_xformers(RuntimeError("Need to compile C++ extensions to use all xFormers features.\n.."))
    assert softmax.xformers_problem() == (
        "xformers 0.0.35 cannot load its CUDA ops (RuntimeError: Need to compile C++ extensions "
        "to use all xFormers features.)")


def test_xformers_that_loads_is_fine_unless_fmha_breaks(fake_xformers, monkeypatch):
    assert softmax.xformers_problem() == ""
    monkeypatch.setitem(sys.modules, "xformers.ops.fmha", None)
    assert softmax.xformers_problem().startswith(
        "xformers 0.0.35: xformers.ops.fmha does not import (ModuleNotFoundError")


def test_xformers_that_does_not_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    assert softmax.xformers_problem().startswith("xformers does not import (ModuleNotFoundError")


def test_xformers_fn_is_causal_in_bnhd(fake_xformers):
    q, k, v = qkv(dtype=torch.float32)
    o = softmax.xformers_fn()(bnhd(q), bnhd(k), bnhd(v))
    call = fake_xformers.calls[-1]
    assert call["shape"] == (2, 37, 3, 16) and isinstance(call["bias"], fake_xformers.mask)
    torch.testing.assert_close(o.transpose(1, 2), softmax.softmax_naive(q, k, v))


def test_xformers_no_operator_is_one_line_not_implemented(fake_xformers):
    x = torch.randn(1, 64, 2, 12, dtype=torch.float16)
    with pytest.raises(NotImplementedError) as info:
        softmax.xformers_fn()(x, x, x)
    assert str(info.value) == (
        "xformers has no operator for these inputs: fa2F@2.5.7-pt: query.shape[-1] % 8 != 0; "
        "cutlassF-pt: query.shape[-1] % 8 != 0; cutlassF-pt: operator wasn't built - see "
        "`python -m xformers.info` for more info")


def test_xformers_impl_names_the_dispatched_ops(fake_xformers):
    impl = softmax.xformers_impl(2, 3, 65536, 64, "bf16", device="cpu")
    assert impl == "xformers 0.0.35: fw fa3F@2.8.0, bw fa3B@2.8.0"
    call = fake_xformers.calls[-1]  # a short stand-in in the case's layout, dtype and bias
    assert call["dispatch"] == (2, 128, 3, 64) and call["dtype"] == torch.bfloat16
    assert isinstance(call["bias"], fake_xformers.mask)
    assert (softmax.xformers_impl(2, 3, 100, 64, "fp32", device="cpu")
            == "xformers 0.0.35: fw cutlassF-pt, bw none")


def test_xformers_impl_never_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    assert softmax.xformers_impl(1, 1, 64, 64, "fp16").startswith("xformers: operator unknown (")
