"""Our own Triton kernels. Kernels import only torch and triton."""
from .lightning2 import default_decay, lightning_attn2  # noqa: F401
