"""What only the fp8 kernel has: its format rules (both operands one fp8 format).

The checks fp8 shares with int8 (reference, interpret numerics, lowering incl. the sm80 e4m3 refusal, shape
errors) are in test_scaled_matmul.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from pk_testutil import SCALED_KINDS

from pallas_kernels.fp8_matmul import fp8_matmul, supports

E4M3 = SCALED_KINDS[1]


def test_unsupported_inputs_raise_with_reason(rng):
  x, w, xs, ws = E4M3.make_inputs(rng, 2, 32, 64)
  with pytest.raises(NotImplementedError, match="differ"):
    fp8_matmul(x, w.astype(jnp.float8_e5m2), xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="x.dtype=bfloat16; the fp8 kernel needs"):
    fp8_matmul(x.astype(jnp.bfloat16), w, xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="w.dtype=int8; the fp8 kernel needs"):
    fp8_matmul(x, w.astype(jnp.int8), xs, ws, interpret=True)
  assert supports(x, w, xs, ws) is None
