"""Our own Triton kernels. Kernels import only torch and triton."""
from .lightning1 import lightning_attn1  # noqa: F401
from .lightning2 import default_decay, lightning_attn2, prefix_states  # noqa: F401
from .lightning2_decode import lightning_attn2_decode  # noqa: F401
