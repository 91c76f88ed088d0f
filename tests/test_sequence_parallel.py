"""baselines/sequence_parallel.py: the sequence split over 2 gloo processes on the CPU (Triton's
interpreter), against single-process lightning_attn2 and the float64 oracle."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from attnbench.baselines import sequence_parallel as sp
from attnbench.baselines.linear import linear_state
from attnbench.kernels import default_decay, lightning_attn2
from conftest import KERNEL_DEVICE
from kernel_testing import rel_err

from attnbench import registry
from attnbench.case import Case

WORLD = 2
SP_CASES = [
    # B, H, N (all ranks), D, E, dtype, decay: odd pieces (N / 2 odd), E != D
    (2, 2, 74, 32, 48, torch.float32, True),
    (1, 3, 42, 16, 16, torch.float32, False),
    (1, 2, 66, 32, 24, torch.float16, True),
]
# bf16 needs the GPU (the interpreter's bf16 tl.dot is wrong): two ranks on one GPU, gloo
BF16_CASES = [(1, 2, 258, 64, 64, torch.bfloat16, True),
              (2, 2, 130, 128, 64, torch.bfloat16, False)]
GRADS = ("o", "dq", "dk", "dv")


def _id(c) -> str:
    b, h, n, d, e, dt, dec = c
    return f"B{b}-H{h}-N{n}-D{d}-E{e}-{str(dt)[6:]}-{'decay' if dec else 'nodecay'}-W{WORLD}"


def _spawn(worker, tmp: Path, *args) -> list:
    """Run ``worker(rank, init_file, out_dir, *args)`` in WORLD gloo processes; the pickled
    result of each rank."""
    mp.start_processes(worker, args=(str(tmp / "init"), str(tmp), *args), nprocs=WORLD,
                       join=True, start_method="spawn")
    return [pickle.loads((tmp / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


def _join(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)


def _fwd_bwd(fn, q, k, v, do, decay):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v, decay)
    o.backward(do.to(o.dtype))
    return [o, q.grad, k.grad, v.grad]


def _lightning_worker(rank, init_file, out_dir, cases, device):
    _join(rank, init_file)
    results = []
    for b, h, n, d, e, dtype, dec in cases:
        g = torch.Generator().manual_seed(7)
        q, k, v, do = (torch.randn(b, h, n, x, generator=g, dtype=torch.float64)
                       for x in (d, d, e, e))
        decay64 = default_decay(h).double() if dec else None
        decay = None if decay64 is None else decay64.float().to(device)
        ref = _fwd_bwd(lambda *a: linear_state(*a)[0], q, k, v, do, decay64)
        whole = _fwd_bwd(lightning_attn2, *(t.to(device, dtype) for t in (q, k, v, do)), decay)
        piece = slice(rank * n // WORLD, (rank + 1) * n // WORLD)
        sp.BYTES_SENT[0] = 0
        mine = _fwd_bwd(sp.lightning2_sp,
                        *(t[:, :, piece].to(device, dtype) for t in (q, k, v, do)), decay)
        results.append(dict(
            sent=sp.BYTES_SENT[0],
            whole=[rel_err(w[:, :, piece], r[:, :, piece]) for w, r in zip(whole, ref)],
            sp=[rel_err(m, r[:, :, piece]) for m, r in zip(mine, ref)],
            vs_whole=[rel_err(m, w[:, :, piece]) for m, w in zip(mine, whole)]))
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    dist.destroy_process_group()


def test_lightning2_sp_equals_whole_sequence():
    """Each rank's piece of the output and of dq, dk, dv (which get the later ranks' share
    through the backward all-gather) equals lightning_attn2 on the whole sequence in one
    process, both against the float64 oracle; one state per all-gather, forward and
    backward, as the registry's byte model says."""
    _check_sp(SP_CASES, KERNEL_DEVICE)


@pytest.mark.gpu
def test_lightning2_sp_bf16_two_ranks_one_gpu():  # pragma: no cover (CUDA)
    _check_sp(BF16_CASES, "cuda")


def _check_sp(cases, device):
    with tempfile.TemporaryDirectory() as tmp:
        per_rank = _spawn(_lightning_worker, Path(tmp), cases, device)
    for i, case in enumerate(cases):
        b, h, n, d, e, dtype, dec = case
        bound = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]
        model = registry.get("lightning2-sp").comm(
            Case("lightning2-sp", "fwdbwd", b, h, n, d, e, "fp32", dec, world_size=WORLD))
        for rank, results in enumerate(per_rank):
            got = results[i]
            for name, s, w, vw in zip(GRADS, got["sp"], got["whole"], got["vs_whole"]):
                where = f"{_id(case)} rank {rank} {name}"
                assert s < bound, f"{where}: {s:.2e} against float64"
                assert s <= 2 * w + bound / 10, f"{where}: {s:.2e}, whole sequence {w:.2e}"
                assert vw < bound, f"{where}: {vw:.2e} against the whole-sequence kernel"
            assert got["sent"] == model == 2 * (WORLD - 1) * b * h * d * e * 4


def _ring_worker(rank, init_file, out_dir):
    _join(rank, init_file)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(rank))
               for _ in range(3))
    try:
        sp._ring(q, k, v)
        tried = ""
    except Exception as exc:  # what context parallelism says on the CPU
        tried = f"{type(exc).__name__}: {exc}"
    try:
        sp.sdpa_ring(q, k, v)
        refused = ""
    except NotImplementedError as exc:
        refused = str(exc)
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps((tried, refused)))
    dist.destroy_process_group()


def test_sdpa_ring_cannot_ring_on_the_cpu():
    """Context parallelism tried for real on gloo: it fails on the CPU, and sdpa_ring and the
    registry say why instead."""
    with tempfile.TemporaryDirectory() as tmp:
        for tried, refused in _spawn(_ring_worker, Path(tmp)):
            assert tried, "context parallelism ran on the CPU: sdpa-ring's reason is stale"
            assert "CPU" in refused and "CUDA SDPA kernels" in refused
    assert "cuda" in registry.get("sdpa-ring").available("cpu").reason


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_sdpa_ring_equals_sdpa():  # pragma: no cover (CUDA, two GPUs)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_ring_gpu_worker, args=(str(Path(tmp) / "init"), tmp), nprocs=WORLD,
                           join=True, start_method="spawn")
        errs = [pickle.loads(Path(tmp, f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    assert max(errs) < 2e-2


def _ring_gpu_worker(rank, init_file, out_dir):  # pragma: no cover (CUDA)
    import torch.nn.functional as F

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 256, 64, generator=g).to("cuda", torch.bfloat16)
               for _ in range(3))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    piece = slice(rank * 128, (rank + 1) * 128)
    out = sp.sdpa_ring(*(t[:, :, piece].contiguous() for t in (q, k, v)))
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(rel_err(out, ref[:, :, piece])))
    dist.destroy_process_group()


def test_without_a_process_group():
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(RuntimeError, match="needs torch.distributed: run under torchrun"):
        sp.lightning2_sp(q, q, q)
    reason = registry.get("lightning2-sp").available("cpu").reason
    assert reason.startswith("needs torch.distributed: run under torchrun")


def test_state_bytes():
    assert sp.state_bytes_sent(1, 32, 128, 128, 4) == 3 * 32 * 128 * 128 * 4
    assert sp.state_bytes_sent(2, 2, 16, 8, 1) == 0


def test_ring_function_backward_repeats(monkeypatch):
    """sdpa-ring's autograd plumbing (the ring's dispatcher entered for the forward and again
    for each backward) with the dispatcher left out: plain SDPA's output and gradients, and a
    kept graph runs backward twice (the harness's bwd mode)."""
    import contextlib

    import torch.nn.functional as F

    monkeypatch.setattr(sp, "_ring_dispatch", lambda *a: contextlib.nullcontext())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    do = torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = torch.autograd.grad(ref, (q, k, v), do)
    out = sp._RingFunction.apply(q, k, v, None)
    assert torch.allclose(out, ref)
    for _ in range(2):
        got = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        for a, b in zip(got, want):
            assert torch.allclose(a, b)
