"""Pallas GPU kernels for quantized matmuls (jax only; plain arrays in and out; never imports jquant).

Subpackages: ``int4_matmul`` (W4A16), ``int8_matmul`` (W8A8), ``fp8_matmul`` (FP8 x FP8). Each exports its kernel
function, ``reference`` (the jnp specification), ``supports`` (a reason string or None) and ``Config``.
"""
