"""Our own Triton kernels. Kernels import only torch and triton."""
