"""Model shapes: the size presets and the one config both families read.

Where the numbers come from
---------------------------
The Lightning Attention-2 paper (arXiv 2401.04658, Table 1) trains LLaMA and TransNormerLLM
(TNL) at 0.4B, 1B and 3B but prints neither family's shapes. We take them from the TNL
releases of its authors (OpenNLPLab on Hugging Face), which are the TNL paper's (arXiv
2307.14995) 385M and 1B models and the same lab's TNL2 3B:

    size  source (config.json)                 dim  layers heads  glu/ffn  vocab
    0.4b  TransNormerLLM-385M (config defaults) 1024   24     8    2816     64000
    1b    TransNormerLLM-1B                     2048   16    16    5632     64000
    3b    TransNormerLLM2-3B-300B               2560   32    20    6912     64000

Every size has head dim 128. LLaMA (arXiv 2302.13971) has no model this small, so LLaMA
gets the same width, depth and heads (the comparison in the paper is by nominal size), and
its own rules for the rest: the SwiGLU hidden size 2/3 * 4 * dim rounded up to a multiple of
256 (which gives 2816, 5632, 6912: exactly TNL's glu_dim, see ``llama_ffn_dim``), its 32000
SentencePiece vocabulary, untied input and output embeddings, RMSNorm eps 1e-5 (LLaMA 2's
params.json), rotary base 10000. TNL ties its embeddings (nanoTransNormer by the TNL authors
does, and only tied counts match the release names: 0.40B, 1.02B, 2.91B).

At equal shapes LLaMA is the lighter model: its attention has 4 dim^2 weights per layer
against TNL's 5 dim^2 (TNL's output gate U), and its vocabulary is half as large. The
parameter counts (``count_params`` on the meta device):

    size   llama     tnl
    0.4b   0.374B    0.399B
    1b     0.953B    1.020B
    3b     2.701B    2.911B

``tiny`` is ours: seconds per training step on two CPU cores, head dim 16 (the smallest our
Triton kernels take).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attnbench.errors import UsageError

FAMILIES = ("llama", "tnl")
# The attention family each model family takes from the registry.
ATTENTION_FAMILY = {"llama": "softmax", "tnl": "linear"}
DEFAULT_MECHANISM = {"llama": "flash2", "tnl": "lightning2"}


@dataclass(frozen=True)
class Shape:
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int  # the GLU hidden size (LLaMA's SwiGLU, TNL's SGLU glu_dim)
    nominal: float  # parameters the size is named for (0 for tiny)
    source: str


SIZES: dict[str, Shape] = {
    "tiny": Shape(dim=64, n_layers=2, n_heads=4, ffn_dim=176, nominal=0,
                  source="ours: CPU tests (ffn by LLaMA's rule with multiple_of 16)"),
    "0.4b": Shape(dim=1024, n_layers=24, n_heads=8, ffn_dim=2816, nominal=0.4e9,
                  source="OpenNLPLab/TransNormerLLM-385M config"),
    "1b": Shape(dim=2048, n_layers=16, n_heads=16, ffn_dim=5632, nominal=1e9,
                source="OpenNLPLab/TransNormerLLM-1B config.json"),
    "3b": Shape(dim=2560, n_layers=32, n_heads=20, ffn_dim=6912, nominal=3e9,
                source="OpenNLPLab/TransNormerLLM2-3B-300B config.json"),
}

# TNL: the Baichuan tokenizer of the releases (vocab_size 64000 in every TNL config above).
# LLaMA: its SentencePiece tokenizer, 32000 (LLaMA paper, Sec. 2.1). tiny: ours.
VOCAB = {("llama", "tiny"): 512, ("tnl", "tiny"): 512, "llama": 32000, "tnl": 64000}


@dataclass(frozen=True)
class ModelConfig:
    family: str  # "llama" | "tnl"
    size: str
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    vocab_size: int
    tie_embeddings: bool
    norm_eps: float
    rope_base: float = 10000.0  # llama: rotary base (LLaMA)
    # tnl: how many leading layers apply LRPE to q and k (the TNL releases: the first only,
    # ``linear_use_lrpe_list = [1, 0, ...]``). LRPE doubles the q/k head dim of those layers.
    lrpe_layers: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def attention_dims(self) -> list[tuple[int, int]]:
        """(D, E) of q/k and v as the mechanism sees them, one pair per layer."""
        d = self.head_dim
        return [(2 * d if i < self.lrpe_layers else d, d) for i in range(self.n_layers)]

    def with_(self, **changes) -> ModelConfig:
        return replace(self, **changes)


def llama_ffn_dim(dim: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU hidden size: 2/3 of 4 * dim, rounded up to a multiple of ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def config_for(family: str, size: str) -> ModelConfig:
    """The config of ``family`` ("llama" | "tnl") at ``size`` (a key of SIZES)."""
    if family not in FAMILIES:
        raise UsageError(f"unknown model {family!r}; known: {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise UsageError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    shape = SIZES[size]
    vocab = VOCAB.get((family, size), VOCAB[family])
    common = dict(family=family, size=size, dim=shape.dim, n_layers=shape.n_layers,
                  n_heads=shape.n_heads, ffn_dim=shape.ffn_dim, vocab_size=vocab)
    if family == "llama":
        return ModelConfig(**common, tie_embeddings=False, norm_eps=1e-5)
    # TNL's SimpleRMSNorm eps is ours (1e-6): it does not change the speed.
    return ModelConfig(**common, tie_embeddings=True, norm_eps=1e-6, lrpe_layers=1)
