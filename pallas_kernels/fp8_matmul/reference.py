"""The jnp specification of the FP8 x FP8 matmul (``reference``, shared with int8 in ``_scaled_matmul``).

Layout: x (M, K) float8_e4m3fn or float8_e5m2; w (N, K) float8, K-contiguous; x_scale float32 (M, 1) per row or
(1, 1) per tensor; w_scale float32 (1, N) per channel or (1, 1) per tensor.
``out = (float32(x) @ float32(w).T) * x_scale * w_scale`` with float32 accumulation.
"""

from __future__ import annotations

from pallas_kernels._scaled_matmul import reference as reference
