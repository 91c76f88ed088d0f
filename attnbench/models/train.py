"""One real training step of a model, its FLOPs per token and its parameter count.

FLOPs per token (model FLOPs, the MFU convention of PaLM / Megatron: what the model needs,
not what the hardware ran, so activation-checkpointing recomputation is not counted)::

    6 * P_matmul + 3 * sum over layers of attn_fwd(N) per token

P_matmul counts every weight that takes part in a matmul for each token (all linear layers,
the output projection included even when tied; not the embedding lookup, norm gains or
LRPE's theta): 2 FLOPs per multiply-add forward and twice that backward. The attention term
is the forward FLOP model of the registry for the model's attention family (its
``quadratic_flops`` and ``linear_state_flops``, here per token), tripled the same way
(backward = 2 x forward, not FlashAttention's 2.5, which counts its recomputation):

- llama (causal softmax): H * N * (D + E) per token per layer, growing with the length N
  (Q K^T and P V over the causal half, 2 FLOPs a multiply-add).
- tnl (linear with decay): 4 * H * D * E per token per layer, independent of N (k^T v into
  the state, q S out), with D = 2 * head dim in the LRPE layer.

So model TFLOP/s = flops_per_token * tokens per step / step time, comparable across
mechanisms of one family (lightning1 does more work than lightning2 for the same model; it is
the model's work that is counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .common import lm_loss, precision
from .config import ModelConfig


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, each tied tensor once (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())  # parameters() already deduplicates


def train_memory_floor(n_params: int, dtype_policy: str) -> int:
    """Bytes a training step holds whatever the length: fp32 parameters, gradients and the two
    AdamW moments (16 B a parameter), plus autocast's bf16 weight copies under "bf16" (2 B).
    Activations come on top: a lower bound, for refusing a case that cannot fit."""
    return n_params * (16 + (2 if dtype_policy == "bf16" else 0))


def matmul_params(config: ModelConfig) -> int:
    from .llama import LLaMA
    from .tnl import TNL
    return (LLaMA if config.family == "llama" else TNL).matmul_params(config)


def attention_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Forward attention FLOPs per token summed over the layers, at length ``seq_len``."""
    h = config.n_heads
    if config.family == "llama":
        return float(sum(h * seq_len * (d + e) for d, e in config.attention_dims()))
    return float(sum(4 * h * d * e for d, e in config.attention_dims()))


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward) at length ``seq_len``."""
    return 6.0 * matmul_params(config) + 3.0 * attention_flops_per_token(config, seq_len)


def lm_step_loss(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor,
                 checkpointing: bool = False, loss_chunk: int | None = None) -> torch.Tensor:
    """The forward of a training step: mean next-token cross-entropy (fp32 scalar) of
    ``model`` (a ``common.Decoder``) on token ids ``(B, N)`` against targets ``(B, N)``, under
    the model's precision policy (bf16 autocast, or fp32). ``checkpointing``: each layer is
    recomputed in the backward rather than kept; ``loss_chunk``: the loss walks that many
    tokens at a time (``common.lm_loss``), None for all at once."""
    with precision(model.dtype_policy, ids.device):
        h = model.hidden(ids, checkpointing)  # [B, N, C]
        return lm_loss(h, model.head, targets, model.dtype_policy, loss_chunk)


@dataclass
class TrainStep:
    """A zero-argument callable: one training step on a fixed random batch.

    Each call: forward, mean cross-entropy (``loss_chunk`` tokens at a time, or all at once
    for None), backward, AdamW step, zero_grad (set to None).
    Returns the loss as a detached 0-dim tensor (no host sync; ``.item()`` it if needed).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor  # (batch, seq_len) int64 token ids
    targets: torch.Tensor  # (batch, seq_len) int64: the inputs shifted by one
    checkpointing: bool
    loss_chunk: int | None

    @property
    def batch(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    @property
    def tokens(self) -> int:
        """Tokens one step trains on: the numerator of TGS."""
        return self.inputs.numel()

    def __call__(self) -> torch.Tensor:
        loss = lm_step_loss(self.model, self.inputs, self.targets, self.checkpointing,
                            self.loss_chunk)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def seeded_batch(model: nn.Module, batch: int, seq_len: int, device, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, N) uniform over the model's vocabulary, drawn from ``seed`` on the CPU
    (the same on every device), and their targets: the ids shifted by one."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq_len + 1),
                           generator=generator).to(device)  # [B, N+1]
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # [B, N] each


def make_train_step(model: nn.Module, batch: int, seq_len: int, device,
                    checkpointing: bool = False, *, loss_chunk: int | None = 8192,
                    lr: float = 3e-4,
                    weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                    seed: int = 0) -> TrainStep:
    """A ``TrainStep`` of ``model`` on ``batch`` x ``seq_len`` random tokens.

    The tokens (seeded with ``seed``, uniform over the vocabulary) are made here, once, on
    ``device``: nothing is generated inside the step. The optimizer is AdamW on the fp32
    parameters (fp32 state: see the dtype policies in ``common``), weight decay on the linear
    and embedding weights only (not norm gains or LRPE's theta), fused on CUDA. Its state is
    allocated by the first step: warm up before timing. The precision is the model's
    ``dtype_policy``.

    ``loss_chunk`` (default 8192 tokens): the cross-entropy walks that many tokens at a time
    and never holds the whole (tokens x vocabulary) logits, whose fp32 copy and gradient
    would otherwise dominate the memory at long lengths (67 GB at 128K tokens, vocab 64000).
    Same FLOPs and gradients (``common.ChunkedLinearCrossEntropy``); None for the plain
    F.cross_entropy on the full logits.
    """
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1; got {batch}, {seq_len}")
    device = torch.device(device)
    inputs, targets = seeded_batch(model, batch, seq_len, device, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    groups = [{"params": [p for p in params if id(p) in matrices], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in matrices], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas,
                                  fused=True if device.type == "cuda" else None)
    return TrainStep(model, optimizer, inputs, targets, checkpointing, loss_chunk)
