"""Tests for kernels/lightning2.py against the float64 oracles in baselines/linear.py.

The 2x rule and the shared helpers: tests/kernel_testing.py. Without a GPU the kernels run
in Triton's interpreter (tests/conftest.py); bf16 and TF32 are checked on the GPU only.
"""

import pytest
import torch
from attnbench.baselines.linear import linear_masked, linear_recurrent, linear_state
from attnbench.kernels import default_decay, lightning2, lightning_attn2
from conftest import KERNEL_DEVICE
from kernel_testing import (
    DTYPES,
    case_id,
    check_against_oracle,
    chunked_reference,
    forward_backward,
    inputs,
    rel_err,
)

CASES = [
    # B, H, N, D, E, dtype, decay
    (2, 3, 77, 48, 48, "fp16", True),
    (2, 3, 77, 48, 48, "fp16", False),
    (1, 2, 1, 16, 16, "fp32", True),
    (1, 2, 1, 16, 16, "fp16", False),
    (1, 2, 17, 96, 64, "fp16", False),
    (2, 1, 130, 64, 192, "fp32", True),
    (1, 1, 130, 192, 96, "fp16", True),
    (1, 2, 64, 128, 128, "fp16", True),
    (1, 1, 40, 256, 256, "fp32", False),
    (1, 1, 33, 256, 48, "fp16", True),
]


def _decay(with_decay, h, device):
    return default_decay(h, device) if with_decay else None


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_oracle(case):
    b, h, n, d, e, dt, dec = case
    check_against_oracle(lightning_attn2, b, h, n, d, e, DTYPES[dt], _decay(dec, h,
                         KERNEL_DEVICE), KERNEL_DEVICE)


SPLIT_CASES = [
    # B, H, N, D, E, dtype, decay, tokens per segment (forced; N not a multiple of it)
    (2, 3, 77, 48, 48, "fp16", True, 20),
    (1, 2, 150, 32, 32, "fp32", False, 70),
    (1, 2, 130, 64, 96, "fp32", True, 33),
    (1, 1, 12, 96, 48, "fp16", False, 1),
]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: case_id(c[:7]) + f"-seg{c[7]}")
def test_split_sequence_matches_oracle(case):
    """The sequence-split path (segments' own states, their combine, each segment from its
    start; the backward's mirror) forced on short sequences: output and every gradient."""
    b, h, n, d, e, dt, dec, seg = case
    fn = lambda q, k, v, s: lightning_attn2(q, k, v, s, _config={"segment": seg})  # noqa: E731
    check_against_oracle(fn, b, h, n, d, e, DTYPES[dt], _decay(dec, h, KERNEL_DEVICE),
                         KERNEL_DEVICE)


def test_split_with_own_state_tiles_matches_oracle():
    """The state-only scans of a split call on tiles of their own (``state_`` config keys:
    one program for all of E, blocks shorter than the output scan's): output and gradients."""
    cfg = {"segment": 33, "state_BLOCK_E": 128, "state_BLOCK_N": 16}
    fn = lambda q, k, v, s: lightning_attn2(q, k, v, s, _config=cfg)  # noqa: E731
    check_against_oracle(fn, 1, 2, 130, 64, 96, torch.float32, default_decay(2, KERNEL_DEVICE),
                         KERNEL_DEVICE)
    plan = lightning2._plan(64, 96, torch.float32, False, cfg)
    assert (plan[3]["BLOCK_E"], plan[3]["NUM_E"], plan[3]["BLOCK_N"]) == (128, 1, 16)
    assert (plan[0]["BLOCK_E"], plan[0]["NUM_E"]) == (32, 3)  # the output scan's own


def test_fused_dkdv_backward_matches_oracle():
    """The opt-in two-scan backward (dk and dv in one scan sharing dS), D = E = 64 and 48/40."""
    fn = lambda q, k, v, s: lightning_attn2(q, k, v, s, _config={"fused": True})  # noqa: E731
    check_against_oracle(fn, 1, 2, 77, 64, 64, torch.float16, default_decay(2, KERNEL_DEVICE),
                         KERNEL_DEVICE)


BF16_CASES = [
    (2, 3, 77, 48, 48, "bf16", True),
    (1, 2, 1000, 128, 128, "bf16", True),
    (1, 2, 1000, 128, 128, "bf16", False),
    (1, 2, 1000, 64, 64, "bf16", True),
    (1, 1, 130, 192, 96, "bf16", True),
    (1, 1, 300, 256, 256, "bf16", False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", BF16_CASES, ids=case_id)
def test_matches_oracle_bf16(case):
    b, h, n, d, e, dt, dec = case
    check_against_oracle(lightning_attn2, b, h, n, d, e, DTYPES[dt], _decay(dec, h, "cuda"),
                         "cuda")


# --- states in and out ---------------------------------------------------------------------


def _with_state(q, k, v, do, decay, h0, dht, split=None, **kw):
    """o and the gradients of <o, do> + <S_N, dht> in q, k, v and h0: in one call, or in two
    calls at ``split`` with the state carried from the first to the second."""
    q, k, v, h0 = (t.detach().clone().requires_grad_() for t in (q, k, v, h0))
    if split is None:
        o, ht = lightning_attn2(q, k, v, decay, h0, output_final_state=True, **kw)
    else:
        o1, h1 = lightning_attn2(*(t[:, :, :split] for t in (q, k, v)), decay, h0, True, **kw)
        o2, ht = lightning_attn2(*(t[:, :, split:] for t in (q, k, v)), decay, h1, True, **kw)
        o = torch.cat([o1, o2], dim=2)
    ((o.float() * do.float()).sum() + (ht * dht).sum()).backward()
    return o, ht, q.grad, k.grad, v.grad, h0.grad


STATE_CASES = [
    # B, H, N, D, E, dtype, decay, split, config
    (2, 2, 77, 32, 48, "fp32", True, 30, None),
    (1, 2, 77, 32, 48, "fp32", False, 64, None),
    (1, 2, 65, 48, 24, "fp16", True, 1, None),
    (1, 2, 50, 32, 32, "fp32", True, 17, {"fused": True}),
    (1, 2, 50, 48, 40, "fp16", False, 20, {"fused": True}),
    (1, 1, 40, 160, 80, "fp32", True, 33, None),
    # the sequence split into segments inside each call, states in and out
    (1, 2, 77, 32, 48, "fp32", True, 30, {"segment": 16}),
    (1, 2, 77, 32, 48, "fp32", False, 64, {"segment": 25}),
    (1, 2, 65, 48, 24, "fp16", True, 1, {"segment": 9}),
]


@pytest.mark.parametrize("case", STATE_CASES,
                         ids=lambda c: case_id(c[:7]) + f"-split{c[7]}" + (
                             f"-seg{c[8]['segment']}" if c[8] and "segment" in c[8] else ""))
def test_state_carried_equals_whole(case):
    """Two halves with the state carried equal the whole: output, final state and every
    gradient (q, k, v, initial state) against the float64 oracle."""
    b, h, n, d, e, dt, dec, split, cfg = case
    dtype = DTYPES[dt]
    q, k, v, do = inputs(b, h, n, d, e, dtype, KERNEL_DEVICE, seed=3)
    g = torch.Generator().manual_seed(4)
    h0, dht = (torch.randn(b, h, d, e, generator=g).to(KERNEL_DEVICE) for _ in range(2))
    decay = _decay(dec, h, KERNEL_DEVICE)
    whole = _with_state(q, k, v, do, decay, h0, dht, _config=cfg)
    halves = _with_state(q, k, v, do, decay, h0, dht, split=split, _config=cfg)
    q64, k64, v64, h64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v, h0))
    ro, rht = linear_state(q64, k64, v64, None if decay is None else decay.cpu().double(), h64)
    ((ro * do.cpu().double()).sum() + (rht * dht.cpu().double()).sum()).backward()
    ref = (ro, rht, q64.grad, k64.grad, v64.grad, h64.grad)
    bound = 1e-5 if dtype == torch.float32 else 3e-3
    for name, w, hv, r in zip(("o", "ht", "dq", "dk", "dv", "dh0"), whole, halves, ref,
                              strict=True):
        assert w.shape == r.shape and hv.shape == r.shape, name
        assert rel_err(w, r) < bound, f"whole {name}: {rel_err(w, r):.2e}"
        assert rel_err(hv, r) < bound, f"halves {name}: {rel_err(hv, r):.2e}"
    assert whole[1].dtype == torch.float32 and whole[5].dtype == torch.float32


def test_state_oracle():
    """linear_state against the recurrence: the initial state as a token prepended at
    position -1 (S0 = k^T v of that token), the final state summed term by term."""
    q, k, v, _ = inputs(2, 3, 21, 16, 24, torch.float64, "cpu")
    decay = default_decay(3).double()
    k0, v0 = torch.randn(2, 3, 1, 16).double(), torch.randn(2, 3, 1, 24).double()
    h0 = k0.transpose(-1, -2) @ v0
    o, ht = linear_state(q, k, v, decay, h0)
    ext = linear_recurrent(torch.cat([torch.zeros_like(k0), q], 2), torch.cat([k0, k], 2),
                           torch.cat([v0, v], 2), decay)
    torch.testing.assert_close(o, ext[:, :, 1:])
    lam = torch.exp(-decay).view(1, 3, 1, 1)
    expect = lam**21 * h0
    for j in range(21):
        expect = expect + lam ** (20 - j) * k[:, :, j, :, None] * v[:, :, j, None, :]
    torch.testing.assert_close(ht, expect)
    torch.testing.assert_close(linear_state(q, k, v, decay)[0], linear_masked(q, k, v, decay))


def _prefix_loop(states, decay, lengths, h0, reverse):
    """The combine as a Python loop in float64: (starts, final)."""
    b, h, count, d, e = states.shape
    lam = torch.ones(h, dtype=torch.float64) if decay is None else torch.exp(-decay.double())
    run = torch.zeros(b, h, d, e, dtype=torch.float64) if h0 is None else h0.double()
    starts = torch.empty(b, h, count, d, e, dtype=torch.float64)
    for r in (reversed(range(count)) if reverse else range(count)):
        starts[:, :, r] = run
        run = lam.view(1, h, 1, 1) ** lengths[r] * run + states[:, :, r].double()
    return starts, run


@pytest.mark.parametrize("reverse", [False, True], ids=["causal", "reverse"])
@pytest.mark.parametrize("with_decay", [True, False], ids=["decay", "nodecay"])
def test_prefix_states_against_a_loop(reverse, with_decay):
    """The one combine (the split scan's and lightning2-sp's): starts and the final state,
    a last segment shorter than the others, an initial state."""
    g = torch.Generator().manual_seed(11)
    states = torch.randn(2, 3, 5, 16, 24, generator=g).to(KERNEL_DEVICE)
    h0 = torch.randn(2, 3, 16, 24, generator=g).to(KERNEL_DEVICE)
    decay = default_decay(3, KERNEL_DEVICE) if with_decay else None
    starts, final = lightning2.prefix_states(states, decay, 7, 3, h0, reverse=reverse,
                                             output_final_state=True)
    want_starts, want_final = _prefix_loop(states.cpu(), None if decay is None else decay.cpu(),
                                           [7, 7, 7, 7, 3], h0.cpu(), reverse)
    assert rel_err(starts, want_starts) < 1e-6 and rel_err(final, want_final) < 1e-6
    assert not torch.equal(starts[:, :, 1], starts[:, :, 2])  # every segment written


def test_split_state_equals_the_final_state_of_the_whole():
    """Segment states combined by prefix_states equal lightning_attn2's final state of the
    whole sequence, and its output is lightning_attn2 of each segment from its start."""
    q, k, v, _ = inputs(1, 2, 50, 16, 32, torch.float32, KERNEL_DEVICE, seed=12)
    decay = default_decay(2, KERNEL_DEVICE)
    pieces = [slice(0, 20), slice(20, 40), slice(40, 50)]
    own = torch.stack([lightning_attn2(q[:, :, p], k[:, :, p], v[:, :, p], decay,
                                       output_final_state=True)[1] for p in pieces], dim=2)
    starts, final = lightning2.prefix_states(own.contiguous(), decay, 20, 10,
                                             output_final_state=True)
    o, whole = lightning_attn2(q, k, v, decay, output_final_state=True)
    assert rel_err(final, whole) < 1e-5
    for i, p in enumerate(pieces):
        got = lightning_attn2(q[:, :, p], k[:, :, p], v[:, :, p], decay, starts[:, :, i])
        assert rel_err(got, o[:, :, p]) < 1e-5


def test_segment_rule():
    """Whole sequences where B*H fills the GPU; else enough segments for one program per
    SM, each long enough that the kept states stay under 5% of q, k, v."""
    bf16 = torch.bfloat16
    assert lightning2.segment_length(4, 32, 32768, 128, 128, bf16, 132) == 32768
    seg = lightning2.segment_length(1, 8, 32768, 128, 128, bf16, 132)
    count = -(-32768 // seg)
    assert seg % 64 == 0 and 132 // 2 < 1 * 8 * 2 * count <= 132  # one wave, the GPU full
    kept = 8 * count * 128 * 128 * 2  # bf16 starts
    assert kept <= 0.05 * 8 * 32768 * (128 + 128 + 128) * 2
    # too short to split under the state budget; fp32 keeps fp32 states (fewer segments)
    assert lightning2.segment_length(1, 8, 1024, 128, 128, bf16, 132) == 1024
    fp32 = lightning2.segment_length(1, 8, 32768, 128, 128, torch.float32, 132)
    assert seg <= fp32 < 32768
    assert lightning2.segment_length(1, 8, 0, 128, 128, bf16, 132) == 0


def test_empty_sequence_passes_the_state():
    q, k, v, _ = inputs(1, 2, 0, 16, 16, torch.float32, KERNEL_DEVICE)
    h0 = torch.randn(1, 2, 16, 16, device=KERNEL_DEVICE)
    o, ht = lightning_attn2(q, k, v, default_decay(2, KERNEL_DEVICE), h0, True)
    assert o.shape == (1, 2, 0, 16)
    torch.testing.assert_close(ht, h0)


def _bf16_state_case(b, h, n, seed):
    """bf16 q, k, v, do (D = E = 128), a random initial state and final-state gradient on the
    GPU, and the float64 blocked oracle's (o, ht, dq, dk, dv, dh0) for them."""
    q, k, v, do = inputs(b, h, n, 128, 128, torch.bfloat16, "cuda", seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    h0, dht = (torch.randn(b, h, 128, 128, generator=g).cuda() for _ in range(2))
    decay = default_decay(h, "cuda")
    x64 = [t.double().requires_grad_() for t in (q, k, v, h0)]
    ro, rht = chunked_reference(*x64[:3], decay.double(), x64[3], chunk=2048)
    ((ro * do.double()).sum() + (rht * dht.double()).sum()).backward()
    return (q, k, v, do, decay, h0, dht), (ro, rht, *(t.grad for t in x64))


@pytest.mark.gpu
def test_bf16_64k_with_state_against_float64():
    """bf16 at N = 64k, with an initial state, against a float64 blocked oracle on the GPU."""
    args, ref = _bf16_state_case(1, 2, 65536, seed=5)
    ours = _with_state(*args)
    # bf16 operands round at 2^-9 relative; the accumulations are fp32.
    for name, got, r in zip(("o", "ht", "dq", "dk", "dv", "dh0"), ours, ref, strict=True):
        assert rel_err(got, r) < 1e-2, f"{name}: {rel_err(got, r):.2e}"


@pytest.mark.gpu
def test_bf16_split_batch1_heads8_with_state_against_float64():
    """The shape long-context training runs (B = 1, H = 8) takes the sequence-split path by
    default on a GPU: 65573 tokens (no multiple of anything), bf16, states in and out."""
    n = 65573
    args, ref = _bf16_state_case(1, 8, n, seed=13)
    ours = _with_state(*args)
    split = [c for key, c in lightning2._CALLS.items() if key[0] is not None
             and key[0][0] == args[0].shape and c.segments is not None]
    assert split, "the default plan did not split B=1, H=8, N=65573"
    whole = _with_state(*args, _config={"segment": n})
    for name, got, w, r in zip(("o", "ht", "dq", "dk", "dv", "dh0"), ours, whole, ref,
                               strict=True):
        err, whole_err = rel_err(got, r), rel_err(w, r)
        # the kept bf16 starts may cost at most a little over the whole-sequence scan's error
        assert err < 1e-2 and err <= 1.25 * whole_err + 1e-4, \
            f"{name}: split {err:.2e}, whole {whole_err:.2e}"


@pytest.mark.gpu
def test_bf16_model_layout_equals_contiguous():
    """bf16, batch 1, heads 8 (split): (B, N, H, D) memory read in place gives the numbers
    the contiguous inputs give, output and gradients."""
    q, k, v, do = inputs(1, 8, 32773, 128, 128, torch.bfloat16, "cuda", seed=16)
    decay = default_decay(8, "cuda")
    model = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, do)]
    got = forward_backward(lightning_attn2, *model, decay)
    ref = forward_backward(lightning_attn2, q, k, v, do, decay)
    assert got[0].transpose(1, 2).is_contiguous()
    for name, g, r in zip(("o", "dq", "dk", "dv"), got, ref, strict=True):
        assert torch.equal(g, r), f"{name}: {rel_err(g, r):.2e}"


@pytest.mark.gpu
def test_tf32_error_is_as_stated():
    """fp32 with tf32=True: TF32 products, error against float64 of order fp16's (< 3e-3),
    well above the IEEE path's (< 1e-5)."""
    q, k, v, do = inputs(1, 2, 4096, 128, 128, torch.float32, "cuda", seed=7)
    decay = default_decay(2, "cuda")
    ref = forward_backward(linear_masked, *(t.double() for t in (q, k, v, do)), decay.double())
    tf32 = forward_backward(lambda *a: lightning_attn2(*a, tf32=True), q, k, v, do, decay)
    ieee = forward_backward(lightning_attn2, q, k, v, do, decay)
    for name, t, i, r in zip(("o", "dq", "dk", "dv"), tf32, ieee, ref, strict=True):
        assert rel_err(t, r) < 3e-3, f"tf32 {name}: {rel_err(t, r):.2e}"
        assert rel_err(i, r) < 1e-5, f"ieee {name}: {rel_err(i, r):.2e}"


@pytest.mark.gpu
def test_direct_launch_gives_the_same_results():
    """The second call of a shape goes through the compiled kernel's launcher directly
    (kernels/common.py: Launcher): same output and gradients as the first, through Triton."""
    q, k, v, do = inputs(2, 3, 333, 64, 64, torch.bfloat16, "cuda", seed=8)
    decay = default_decay(3, "cuda")
    fast_before = lightning2._SCAN.fast
    first = forward_backward(lightning_attn2, q, k, v, do, decay)
    second = forward_backward(lightning_attn2, q, k, v, do, decay)
    assert lightning2._SCAN.disabled is None
    assert lightning2._SCAN.fast >= fast_before + 4  # forward and three backward scans
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_many_heads_beyond_the_grid_y_limit():
    """B * H = 70000 > 65535: the grid holds it on its first axis."""
    q = torch.randn(1, 70000, 3, 16, device="cuda", dtype=torch.float16)
    o = lightning_attn2(q, q, q)
    torch.testing.assert_close(o, linear_masked(q.float(), q.float(), q.float()).half(),
                               atol=2e-2, rtol=2e-2)


# --- small behaviours ----------------------------------------------------------------------


LAYOUTS = {  # how q, k, v, do are laid out in memory; "bnhd": (B, N, H, X) seen as (B, H, N, X)
    "all-bnhd": ("bnhd", "bnhd", "bnhd", "bnhd"),
    "mixed": ("bhnd", "bhnd", "bnhd", "bnhd"),  # a model's rotary q, k; its strided v
    "do-bnhd": ("bhnd", "bhnd", "bhnd", "bnhd"),
    "sliced": ("sliced", "bnhd", "bhnd", "sliced"),  # neither layout: copied
}


def _leaf_and_view(x, layout):
    """A leaf holding x's values in ``layout`` and the (B, H, N, X) view of it."""
    if layout == "sliced":  # every other element of a wider tensor
        leaf = torch.stack([x, torch.full_like(x, float("nan"))], dim=-1).requires_grad_()
        return leaf, leaf.flatten(-2)[..., ::2]
    leaf = x.transpose(1, 2).contiguous() if layout == "bnhd" else x.contiguous()
    leaf.requires_grad_()
    return leaf, (leaf.transpose(1, 2) if layout == "bnhd" else leaf)


@pytest.mark.parametrize("layout,segment", [("all-bnhd", None), ("all-bnhd", 16),
                                            ("mixed", 16), ("do-bnhd", None),
                                            ("sliced", None)])
def test_layouts_read_in_place(layout, segment):
    """(B, N, H, X) memory (what a model's projections write) is read and written in place:
    no copy, o made in v's layout, each gradient in its input's layout; other strides are
    copied. Same numbers as contiguous inputs, whole or split."""
    q, k, v, do = inputs(1, 2, 40, 32, 48, torch.float32, KERNEL_DEVICE, seed=15)
    decay = default_decay(2, KERNEL_DEVICE)
    cfg = None if segment is None else {"segment": segment}
    pairs = [_leaf_and_view(x, kind) for x, kind in zip((q, k, v, do), LAYOUTS[layout],
                                                         strict=True)]
    views = [view for _, view in pairs]
    o = lightning_attn2(*views[:3], decay, _config=cfg)
    o.backward(views[3].detach())
    grads = [leaf.grad.flatten(-2)[..., ::2] if kind == "sliced" else
             (leaf.grad.transpose(1, 2) if kind == "bnhd" else leaf.grad)
             for (leaf, _), kind in zip(pairs[:3], LAYOUTS[layout][:3], strict=True)]
    ref = forward_backward(lambda *a: lightning_attn2(*a, _config=cfg), q, k, v, do, decay)
    for g, r in zip((o, *grads), ref, strict=True):
        torch.testing.assert_close(g, r)
    launches = next(c for key, c in lightning2._CALLS.items()
                    if key[0] is not None and key[-3:] == tuple(x.stride() for x in views[:3])
                    and key[3] == (None if cfg is None else tuple(cfg.items())))
    assert launches.copy == tuple(kind == "sliced" for kind in LAYOUTS[layout][:3])
    assert o.transpose(1, 2).is_contiguous() == (LAYOUTS[layout][2] == "bnhd")


def test_strong_decay_stays_finite():
    # lambda^BLOCK underflows to 0 and the masked-out exponents would overflow: no NaN.
    q, k, v, do = inputs(1, 2, 70, 16, 16, torch.float32, KERNEL_DEVICE)
    decay = torch.tensor([30.0, 100.0], device=KERNEL_DEVICE)
    got = forward_backward(lightning_attn2, q, k, v, do, decay)
    ref = forward_backward(linear_masked, *(t.double() for t in (q, k, v, do)), decay.double())
    for g, r in zip(got, ref, strict=True):
        assert rel_err(g, r) < 1e-5


def test_no_grad_skips_autograd():
    q, k, v, _ = inputs(1, 2, 9, 16, 16, torch.float32, KERNEL_DEVICE)
    q.requires_grad_()
    with torch.no_grad():
        o = lightning_attn2(q, k, v)
    assert o.grad_fn is None
    assert lightning_attn2(q, k, v).grad_fn is not None


@pytest.mark.gpu
def test_a_length_sweep_compiles_nothing_new():
    """N, the segment length and count are runtime arguments: new lengths, split or whole,
    reuse the compiled scans and combine."""
    decay = default_decay(8, "cuda")

    def sweep(lengths):
        for n in lengths:
            q, k, v, do = inputs(1, 8, n, 64, 64, torch.bfloat16, "cuda", seed=n)
            forward_backward(lightning_attn2, q, k, v, do, decay)
        torch.cuda.synchronize()
        kernels = (lightning2._lightning2_scan_kernel, lightning2._lightning2_combine_kernel)
        return [sum(len(c[0]) for c in kern.device_caches.values()) for kern in kernels]

    before = sweep([300, 40000])  # one whole, one split
    assert sweep([301, 500, 41000, 65573]) == before


def test_default_decay():
    s = default_decay(8)
    assert s.shape == (8,) and s.dtype == torch.float32
    expected = torch.tensor([2.0 ** (-8 * h / 8) for h in range(1, 9)])
    torch.testing.assert_close(s, expected)
    with pytest.raises(ValueError, match="num_heads"):
        default_decay(0)


def _t(*shape, dtype=torch.float16, device=KERNEL_DEVICE):
    return torch.randn(*shape).to(device=device, dtype=dtype)


def _qkv(d=16, e=16, n=8, **kw):
    """q, k, v with one tensor changed: kw maps 'q'/'k'/'v' to a replacement tensor."""
    base = {"q": _t(1, 2, n, d), "k": _t(1, 2, n, d), "v": _t(1, 2, n, e)}
    base.update(kw)
    return base["q"], base["k"], base["v"]


F32, I32, F64 = torch.float32, torch.int32, torch.float64
BAD = {
    "rank": (lambda: _qkv(q=_t(2, 8, 16)), {}, "4-D"),
    "not-a-tensor": (lambda: _qkv(q=[1.0]), {}, "torch.Tensor"),
    "k-shape": (lambda: _qkv(k=_t(1, 2, 9, 16)), {}, "expected q, k"),
    "v-shape": (lambda: _qkv(v=_t(1, 3, 8, 16)), {}, "expected q, k"),
    "D8": (lambda: _qkv(d=8), {}, r"D must be in \[16, 256\]"),
    "D288": (lambda: _qkv(d=288, n=4), {}, r"D must be in \[16, 256\]"),
    "E12": (lambda: _qkv(e=12), {}, r"E must be in \[16, 256\]"),
    "E260": (lambda: _qkv(e=260, n=4), {}, r"E must be in \[16, 256\]"),
    "N-int32-offsets": (lambda: (_t(1, 1, 1, 256).expand(1, 1, 2**23, 256),) * 3, {}, "2\\^31"),
    "int32": (lambda: (torch.ones(1, 2, 8, 16, dtype=I32),) * 3, {}, "float16, bfloat16"),
    "fp64": (lambda: (_t(1, 2, 8, 16, dtype=F64),) * 3, {}, "float16, bfloat16"),
    "mixed-dtype": (lambda: _qkv(k=_t(1, 2, 8, 16, dtype=F32)), {}, "share one dtype"),
    "mixed-device": (lambda: _qkv(v=_t(1, 2, 8, 16, device="meta")), {}, "one device"),
    "decay-shape": (_qkv, {"decay": lambda: torch.ones(3, device=KERNEL_DEVICE)}, r"\(H,\)"),
    "decay-int": (_qkv, {"decay": lambda: torch.ones(2, dtype=I32, device=KERNEL_DEVICE)},
                  "floating"),
    "decay-device": (_qkv, {"decay": lambda: torch.ones(2, device="meta")}, "q's device"),
    "state-shape": (_qkv, {"initial_state": lambda: torch.zeros(1, 2, 16, 8,
                                                                device=KERNEL_DEVICE)},
                    r"\(B, H, D, E\)"),
    "state-dtype": (_qkv, {"initial_state": lambda: torch.zeros(1, 2, 16, 16, dtype=F64,
                                                                device=KERNEL_DEVICE)},
                    "float32"),
    "state-device": (_qkv, {"initial_state": lambda: torch.zeros(1, 2, 16, 16,
                                                                 device="meta")}, "q's device"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_value_errors(name):
    make_qkv, make_kw, match = BAD[name]
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=match):
        lightning_attn2(q, k, v, **{key: make() for key, make in make_kw.items()})


@pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="the sign is checked on CPU tensors only")
def test_negative_decay_rejected_on_cpu_every_call():
    q = _t(1, 2, 8, 16)
    lightning_attn2(q, q, q, torch.tensor([0.5, 0.0]))  # s = 0 is lambda = 1: allowed
    # Same shapes as the call above (validated and cached): the values are still checked.
    with pytest.raises(ValueError, match=">= 0"):
        lightning_attn2(q, q, q, torch.tensor([0.5, -0.5]))


def test_cpu_tensors_rejected_without_interpreter(monkeypatch):
    monkeypatch.setattr(lightning2, "_ON_CPU", False)
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="CUDA"):
        lightning_attn2(q, q, q)
