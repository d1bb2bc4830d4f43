"""Pallas GPU kernels for quantized matmuls (jax only; plain arrays in and out; never imports jquant).

Subpackages: ``int4_matmul`` (W4A16), ``int8_matmul`` (W8A8), ``fp8_matmul`` (FP8 x FP8). Each exports its kernel
function, ``reference`` (the jnp specification), ``supports`` (a reason string or None) and ``Config``.
``_common`` holds what every kernel shares (tiling, padding, autotuning, the ops-level dispatch);
``_scaled_matmul`` is the one Triton body, wrapper and input check of the int8 and fp8 matmuls, parameterised by
operand type (int8 accumulates in int32, fp8 in float32; the float32 scale epilogue is the same). ``int4_matmul``
has its own body (``kernel.py``).
"""
