"""Softmax attention: the materialised reference, PyTorch SDPA pinned to one backend,
FlashAttention-2 and xFormers.

Every callable here is causal with scale ``1/sqrt(D)`` and takes ``fn(q, k, v, decay=None)``.
Layout ``(B, H, N, D)`` (v may have its own head dim E) unless a function says
``(B, N, H, D)``: FlashAttention-2 and xFormers work in that layout natively, so the harness
makes their inputs in it before timing.

Each wrapper runs one named implementation or refuses with ``NotImplementedError`` carrying
the implementation's own reason (the harness records that as ``unsupported``); nothing falls
back silently. The ``*_problem`` functions say, in one line, why a wrapper cannot run here
("" if it can); the ``*_impl`` functions say which implementation ran, for the record.
"""

from __future__ import annotations

import importlib
import logging
import math
import platform
import re
import warnings

import torch
import torch.nn.functional as F

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def _no_decay(decay) -> None:
    if decay is not None:
        raise ValueError("softmax attention takes no decay")


# --- the materialised reference -------------------------------------------------------------


def softmax_naive(q, k, v, decay=None):
    """Causal softmax attention with the n x n score matrix materialised: O(n^2) memory."""
    _no_decay(decay)
    n = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, N, N]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, H, N, E]


# --- PyTorch SDPA pinned to one backend -----------------------------------------------------

SDPA_LABELS = {"MATH": "math", "FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient",
               "CUDNN_ATTENTION": "cuDNN"}
# When no enabled backend takes the inputs, PyTorch warns this header before each backend's
# reasons, then raises "No available kernel" (CUDA; the CPU dispatcher says "No viable
# backend" when the pinned backend does not exist there).
_REFUSAL_HEADERS = {"FLASH_ATTENTION": "Flash attention kernel not used because",
                    "EFFICIENT_ATTENTION": "Memory efficient kernel not used because",
                    "CUDNN_ATTENTION": "cuDNN attention kernel not used because"}
_REFUSALS = ("No available kernel", "No viable backend")
_ORIGIN = re.compile(r"\s*\(Triggered internally at [^)]*\)\s*$")


def _refusal_reasons(backend_name: str, attend, q, k, v) -> list[str]:
    """PyTorch's reasons for refusing, from the warnings a second (failing) call emits.

    Only run on the failure path: the first call's warnings are gone by the time its error
    arrives. (A reason PyTorch warns only once per process may be missing on later cases.)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            attend(q, k, v)
        except RuntimeError:
            pass
    messages = [_ORIGIN.sub("", str(w.message)).strip() for w in caught]
    header = _REFUSAL_HEADERS.get(backend_name)
    starts = [i for i, m in enumerate(messages) if header and m.startswith(header)]
    if starts:  # this backend's section: from its header to the next header
        section = []
        for m in messages[starts[0] + 1:]:
            if m.endswith("not used because:"):
                break
            section.append(m)
        messages = section
    else:
        messages = [m for m in messages if not m.endswith("not used because:")]
    return list(dict.fromkeys(m for m in messages if m))


def sdpa_backend_fn(backend_name: str, layout: str = "bhnd", causal: bool = True):
    """``F.scaled_dot_product_attention`` restricted to one backend, so nothing falls back.

    ``backend_name`` is a member of ``torch.nn.attention.SDPBackend`` ("MATH",
    "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"). ``layout="bnhd"`` takes
    and returns ``(B, N, H, D)`` tensors, handed to SDPA as ``(B, H, N, D)`` views: the flash
    and efficient kernels work in ``(B, N, H, D)`` memory, so no copy is made either way.
    ``causal=False``: no mask (a decode step's one query against its whole context).

    A backend that refuses the inputs raises ``NotImplementedError`` with PyTorch's reasons.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    label = SDPA_LABELS.get(backend_name, backend_name)

    if layout == "bhnd":
        def attend(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    elif layout == "bnhd":
        def attend(q, k, v):  # [B, N, H, D] -> [B, H, N, D] views -> [B, N, H, E]
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=causal)
            return o.transpose(1, 2)
    else:
        raise ValueError(f"layout must be 'bhnd' or 'bnhd', not {layout!r}")

    def sdpa(q, k, v, decay=None):
        _no_decay(decay)
        with sdpa_kernel([backend]):
            try:
                return attend(q, k, v)
            except RuntimeError as exc:
                if not any(text in str(exc) for text in _REFUSALS):
                    raise
                reasons = _refusal_reasons(backend_name, attend, q, k, v)
                why = "; ".join(reasons) if reasons else str(exc).strip().splitlines()[0]
                raise NotImplementedError(
                    f"SDPA's {label} backend refuses {q.dtype} {tuple(q.shape)} on "
                    f"{q.device.type}: {why}") from exc

    sdpa.__name__ = f"sdpa_{backend_name.lower()}"
    return sdpa


def sdpa_problem(backend_name: str) -> str:
    """Why this torch build cannot run the backend at all ("" if it may)."""
    if backend_name == "FLASH_ATTENTION" and not torch.backends.cuda.is_flash_attention_available():
        return f"torch {torch.__version__} was built without FlashAttention"
    if backend_name == "CUDNN_ATTENTION":
        if not torch.backends.cudnn.is_available():
            return f"torch {torch.__version__} was built without cuDNN"
        version = torch.backends.cudnn.version() or 0
        if version < 90000:
            return f"cuDNN {version} is too old for SDPA's cuDNN backend (needs 9.0 or newer)"
    return ""


def _torch_flash_version() -> str:
    try:
        return str(torch.nn.attention._get_flash_version())
    except Exception:  # a private helper: its absence must not stop a sweep
        return "?"


# --- FlashAttention-2 -----------------------------------------------------------------------


def _flash_attn():
    """(flash_attn module or None, why not): the package counts only if it imports, as v2."""
    try:
        module = importlib.import_module("flash_attn")
    except ModuleNotFoundError as exc:
        if exc.name not in (None, "flash_attn"):  # it is there, but something it needs is not
            return None, f"flash-attn does not import ({_one_line(exc)})"
        return None, "flash-attn not installed"
    except Exception as exc:  # e.g. its CUDA extension was built for another torch
        return None, f"flash-attn does not import ({_one_line(exc)})"
    version = getattr(module, "__version__", "?")
    if not hasattr(module, "flash_attn_func"):
        return None, f"flash-attn {version} has no flash_attn_func (FlashAttention-2 needs 2.x)"
    return module, ""


def flash2_fn():
    """FlashAttention-2, causal, in ``(B, N, H, D)``: q, k [B, N, H, D], v [B, N, H, E].

    flash-attn's ``flash_attn_func`` if the package imports; otherwise PyTorch SDPA pinned to
    its flash backend, which is FlashAttention-2's kernel built into torch, given the same
    ``(B, N, H, D)`` memory as views (exactly how SDPA calls that kernel itself).
    """
    module, _ = _flash_attn()
    if module is None:
        fn = sdpa_backend_fn("FLASH_ATTENTION", layout="bnhd")
        fn.__name__ = "flash2_sdpa"
        return fn
    flash_attn_func = module.flash_attn_func

    def flash2(q, k, v, decay=None):
        _no_decay(decay)
        return flash_attn_func(q, k, v, causal=True)  # [B, N, H, E]

    return flash2


def flash2_choice() -> str:
    """Which FlashAttention-2 will run here, and why (for ``attnbench list``)."""
    module, why_not = _flash_attn()
    if module is not None:
        return f"runs flash-attn {getattr(module, '__version__', '?')} flash_attn_func"
    return (f"runs PyTorch SDPA's flash backend (FlashAttention {_torch_flash_version()} in "
            f"torch {torch.__version__}): {why_not}")


def flash2_problem() -> str:
    module, why_not = _flash_attn()
    if module is not None:
        return ""
    problem = sdpa_problem("FLASH_ATTENTION")
    return f"{why_not}, and {problem}" if problem else ""


def flash2_impl(b: int, h: int, n: int, d: int, dtype: str) -> str:
    module, _ = _flash_attn()
    if module is not None:
        return f"flash-attn {getattr(module, '__version__', '?')} flash_attn_func"
    return f"torch {torch.__version__} SDPA flash (FlashAttention {_torch_flash_version()})"


# --- xFormers -------------------------------------------------------------------------------


def _import_xformers():
    """Import xformers with its load-failure log line silenced: xformers_problem says it."""
    log = logging.getLogger("xformers")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        return importlib.import_module("xformers")
    finally:
        log.setLevel(level)


def xformers_problem() -> str:
    """Why xformers' attention cannot run here, in one line ("" if it can).

    xformers imports even when its compiled ops do not load (built for another torch or
    Python): it keeps the failure in ``xformers._cpp_lib._cpp_library_load_exception``, with
    the build's versions (from its ``cpp_lib.json``) in the exception's ``build_info``.
    """
    try:
        xformers = _import_xformers()
    except Exception as exc:
        return f"xformers does not import ({_one_line(exc)})"
    version = getattr(xformers, "__version__", "?")
    cpp_lib = importlib.import_module("xformers._cpp_lib")
    failure = getattr(cpp_lib, "_cpp_library_load_exception", None)
    if failure is not None:
        info = getattr(failure, "build_info", None)
        built, here = [], []
        if info is not None and info.torch_version != torch.__version__:
            built.append(f"torch {info.torch_version}")
            here.append(f"torch {torch.__version__}")
        python = platform.python_version()
        # Its ops are a torch library, not a Python extension (the wheel is tagged py39-none):
        # the Python version matters only as a last suspect, when torch's matches.
        if (info is not None and not built
                and info.python_version.split(".")[:2] != python.split(".")[:2]):
            built.append(f"Python {info.python_version}")
            here.append(f"Python {python}")
        if built:
            return (f"xformers {version} was built for {' and '.join(built)}, this is "
                    f"{' and '.join(here)}: its CUDA ops do not load")
        cause = failure.__cause__ or failure
        return f"xformers {version} cannot load its CUDA ops ({_one_line(cause)})"
    try:
        importlib.import_module("xformers.ops.fmha")
    except Exception as exc:
        return f"xformers {version}: xformers.ops.fmha does not import ({_one_line(exc)})"
    return ""


def _compact_no_operator(message: str) -> str:
    """xformers' many-line "No operator found" message as one line of op: reasons."""
    parts, op = [], None
    for line in (s.strip() for s in message.splitlines()):
        if line.endswith("is not supported because:"):
            op = line.split("`")[1] if "`" in line else line
        elif op and line:
            parts.append(f"{op}: {line}")
    return "xformers has no operator for these inputs: " + ("; ".join(parts) or message)


def xformers_fn():
    """``xformers.ops.memory_efficient_attention``, causal: q, k [B, N, H, D], v [B, N, H, E].

    xformers picks the operator (its FlashAttention-3/2 or CUTLASS kernels); ``xformers_impl``
    says which. Inputs no operator takes raise ``NotImplementedError`` with its reasons.
    """
    from xformers.ops import LowerTriangularMask, memory_efficient_attention

    causal = LowerTriangularMask()

    def xformers_attn(q, k, v, decay=None):
        _no_decay(decay)
        try:
            return memory_efficient_attention(q, k, v, attn_bias=causal)  # [B, N, H, E]
        except NotImplementedError as exc:
            if "No operator found" not in str(exc):
                raise
            raise NotImplementedError(_compact_no_operator(str(exc))) from exc

    return xformers_attn


def xformers_impl(b: int, h: int, n: int, d: int, dtype: str, device: str = "cuda") -> str:
    """The forward and backward operators xformers dispatches to for this case.

    xformers 0.0.35 chooses from head dim, dtype, strides, bias and device, never from the
    sequence length (unless keys are broadcast, as in MQA, which never happens here), so a
    128-token stand-in of the case's layout and dtype gets the same answer without
    allocating the case again.
    """
    try:
        xformers = _import_xformers()
        from xformers.ops.fmha import attn_bias
        from xformers.ops.fmha.common import Inputs
        from xformers.ops.fmha.dispatch import _dispatch_bw, _dispatch_fw

        x = torch.empty((b, min(n, 128), h, d), dtype=_DTYPES[dtype], device=device)
        inp = Inputs(query=x, key=x, value=x, attn_bias=attn_bias.LowerTriangularMask())
        fw = _dispatch_fw(inp, True).NAME
        try:
            bw = _dispatch_bw(inp, varlen_lse_packed=None).NAME
        except NotImplementedError:
            bw = "none"
        return f"xformers {xformers.__version__}: fw {fw}, bw {bw}"
    except Exception as exc:  # a record must never be lost to this label
        return f"xformers: operator unknown ({_one_line(exc)})"
