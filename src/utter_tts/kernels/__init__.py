"""Fused Triton decode kernels (packed tokens), each with its plain-PyTorch reference op beside it."""
