"""What the kernels share: the decay convention, constants, input validation, a fast launch.

Imports only torch and triton (the kernels are liftable without the harness).

Shape letters as everywhere in attnbench: B batch, H heads, N sequence length, D the q/k head
dim, E the value head dim; the state is (B, H, D, E).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# exp(x) = exp2(x * LOG2E): the kernels build every decay factor with exp2.
LOG2E = tl.constexpr(1.4426950408889634)

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_DIM, MAX_DIM = 16, 256
MAX_GRID_Y = 65535  # CUDA's limit on a grid's second (and third) axis
MAX_OFFSET = 2**31  # in-head offsets (position x head dim) are int32 inside the kernels


def default_decay(num_heads: int, device=None) -> torch.Tensor:
    """The paper's ALiBi-style decay rates s_h = 2^(-8h/H), h = 1..H: float32 ``(H,)``.

    lambda_h = exp(-s_h): head 1 forgets fastest, head H slowest.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1; got {num_heads}")
    h = torch.arange(1, num_heads + 1, dtype=torch.float64)
    return torch.pow(2.0, -8.0 * h / num_heads).to(device=device, dtype=torch.float32)


def interpreted(kernel) -> bool:
    """True when ``kernel`` (a @triton.jit function, possibly under an autotuner) was built by
    Triton's CPU interpreter (TRITON_INTERPRET=1 when it was decorated)."""
    fn = getattr(kernel, "fn", kernel)  # an Autotuner holds the JITFunction in .fn
    fn = fn if isinstance(fn, triton.runtime.jit.JITFunction) else getattr(fn, "fn", fn)
    return not isinstance(fn, triton.runtime.jit.JITFunction)


def input_key(q, k, v, decay=None, initial_state=None) -> tuple | None:
    """What validation depends on (shapes, dtypes, devices), as one hashable tuple; None if
    an argument is not a tensor (then the full check raises)."""
    try:
        return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device,
                v.device,
                None if decay is None else (decay.shape, decay.dtype, decay.device),
                None if initial_state is None else (initial_state.shape, initial_state.dtype,
                                                    initial_state.device))
    except AttributeError:
        return None


_VALID: set = set()  # input keys already validated


def validate(q, k, v, decay=None, initial_state=None, *, on_cpu: bool, grid_bh_limit=None):
    """Check every limit of a kernel call; raise ValueError with one clear line.

    ``on_cpu``: CPU tensors are allowed (the kernel runs in Triton's interpreter).
    ``grid_bh_limit``: the largest B * H the kernel's grid can hold (None: no limit).
    The checks depend only on shapes, dtypes and devices, so a call whose metadata passed
    before costs one tuple and one set lookup.
    """
    key = input_key(q, k, v, decay, initial_state)
    if key is None or (key, on_cpu, grid_bh_limit) not in _VALID:
        check_inputs(q, k, v, decay, initial_state, on_cpu=on_cpu, grid_bh_limit=grid_bh_limit)
        if len(_VALID) > 4096:
            _VALID.clear()
        _VALID.add((key, on_cpu, grid_bh_limit))
    check_rates(decay)


def aligned(tensors) -> bool:
    """Every pointer 16-byte aligned (Triton specialises on it): one OR of the addresses."""
    acc = 0
    for t in tensors:
        acc |= t.data_ptr()
    return acc & 15 == 0


def check_rates(decay):
    """Rates s >= 0, read only from CPU tensors: reading GPU values would synchronise the
    host with the device."""
    if decay is not None and decay.device.type == "cpu" and not bool((decay >= 0).all()):
        raise ValueError("decay rates must be >= 0 (lambda = exp(-s) <= 1)")


def check_inputs(q, k, v, decay=None, initial_state=None, *, on_cpu: bool, grid_bh_limit=None):
    """The full check behind ``validate`` (no cache)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D); got shape {tuple(t.shape)}")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k (B, H, N, D) and v (B, H, N, E); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype not in DTYPES:
        raise ValueError(f"dtype must be float16, bfloat16 or float32; got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not (on_cpu and q.device.type == "cpu"):
        raise ValueError(
            f"q, k, v must be CUDA tensors (CPU only under TRITON_INTERPRET=1); got {q.device}"
        )
    b, h, n, d = q.shape
    e = v.shape[-1]
    for name, size in (("D", d), ("E", e)):
        if not MIN_DIM <= size <= MAX_DIM:
            raise ValueError(f"head dim {name} must be in [{MIN_DIM}, {MAX_DIM}]; got {size}")
    if b < 1 or h < 1:
        raise ValueError(f"B and H must be >= 1; got B={b}, H={h}")
    if grid_bh_limit is not None and b * h > grid_bh_limit:
        raise ValueError(f"B * H must be at most {grid_bh_limit} (grid axis); got {b * h}")
    if (n + 128) * max(d, e) >= MAX_OFFSET:
        raise ValueError(f"(N + 128) * max(D, E) must stay under 2^31 (int32 offsets); got N={n}")
    if decay is not None:
        if not isinstance(decay, torch.Tensor) or not decay.is_floating_point():
            raise ValueError("decay must be None or a floating tensor of shape (H,)")
        if decay.shape != (h,):
            raise ValueError(f"decay must have shape (H,) = ({h},); got {tuple(decay.shape)}")
        if decay.device != q.device:
            raise ValueError(f"decay must be on q's device {q.device}; got {decay.device}")
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor):
            raise ValueError("initial_state must be None or a tensor (B, H, D, E)")
        if initial_state.shape != (b, h, d, e):
            raise ValueError(
                f"initial_state must have shape (B, H, D, E) = {(b, h, d, e)}; "
                f"got {tuple(initial_state.shape)}"
            )
        if initial_state.dtype != torch.float32:
            raise ValueError(f"initial_state must be float32; got {initial_state.dtype}")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state must be on q's device {q.device}")


def hooks_active() -> bool:
    """A launch hook is set (a profiler): launches must go through Triton's own path.
    Triton >= 3.5 keeps the hooks as (possibly empty) HookChains, older ones as None."""
    rt = triton.knobs.runtime
    return any(h is not None and getattr(h, "calls", True)
               for h in (rt.launch_enter_hook, rt.launch_exit_hook))


class Launcher:
    """Launch one @triton.jit kernel with little Python per call.

    The first call of each compiled variant goes through Triton's launcher (which binds the
    arguments, computes the specialisation key, compiles or finds the binary); it returns
    the compiled kernel, kept here under ``key``. Later calls with that key hand the
    arguments straight to the compiled kernel's launcher, as Triton itself does at the end
    of its own path. ``key`` must fix every constexpr and the dtype of every tensor
    argument; the caller passes ``aligned`` (every pointer 16-byte aligned, which Triton
    specialises on): unaligned calls always go through Triton. So do calls under the
    interpreter and while a launch hook is set. A failure of the direct path turns it off
    for good, with the reason in ``disabled``. ``fast`` and ``slow`` count the two paths.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled: dict = {}
        self.disabled: str | None = None
        self.fast = self.slow = 0

    @staticmethod
    def stream(device_index):
        return triton.runtime.driver.active.get_current_stream(device_index)

    def __call__(self, key, grid, args, num_warps, num_stages, device_index, aligned=True):
        key = (key, device_index)  # a compiled kernel is loaded on one device
        if aligned and self.disabled is None:
            ck = self.compiled.get(key)
            if ck is not None and not hooks_active():
                try:
                    ck.run(grid[0], grid[1], grid[2], self.stream(device_index), ck.function,
                           ck.packed_metadata, None, None, None, *args)
                    self.fast += 1
                    return
                except Exception as e:  # noqa: BLE001 - Triton's API changed: use its path
                    self.disabled = f"{type(e).__name__}: {e}"
        self.slow += 1
        ck = self.kernel[grid](*args, num_warps=num_warps, num_stages=num_stages)
        if aligned and device_index is not None and hasattr(ck, "packed_metadata"):
            self.compiled[key] = ck


def pow2(x: int) -> int:
    """The next power of two >= x (triton.next_power_of_2 costs ~10 us from Python)."""
    return 1 << (x - 1).bit_length()
