"""Helpers shared by the kernel tests: CUDA lowering from a CPU host, GPU detection, tolerances, input makers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import AbstractDevice, AbstractMesh

from pallas_kernels import fp8_matmul as f8
from pallas_kernels import int8_matmul as i8

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
DEVICE_KINDS = (H100, A100)

# Tolerances relative to max |reference| (outputs are rounded to the output dtype once).
TOL = {jnp.dtype(jnp.bfloat16): 1.6e-2, jnp.dtype(jnp.float16): 2e-3, jnp.dtype(jnp.float32): 1e-5}

def lower_for_cuda(fn, *args, device_kind: str = H100):
  """Traces ``fn`` on ShapeDtypeStructs and lowers it for CUDA (runs the real Pallas -> Triton lowering)."""
  dev = AbstractDevice(device_kind=device_kind, num_cores=132, platform="gpu")
  with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=dev)):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))

def sds(shape, dtype):
  return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

def assert_close(got, want, dtype, scale_ref=None):
  got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
  want = np.asarray(jnp.asarray(want, jnp.float32), np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  ref = scale_ref if scale_ref is not None else max(float(np.max(np.abs(want))), 1e-6)
  err = float(np.max(np.abs(got - want)))
  assert err <= TOL[jnp.dtype(dtype)] * ref, f"max abs err {err:.3g} > {TOL[jnp.dtype(dtype)]} * {ref:.3g}"


@dataclasses.dataclass(frozen=True)
class Kind:
  """One operand type of the shared int8/fp8 scaled matmul, as the parameterised tests see it."""

  name: str
  fn: Callable
  reference: Callable
  autotune_configs: Callable
  dtype: jnp.dtype
  np_dtype: type        # what NumPy holds the operand as before the float64 upcast
  ref_rtol: float       # reference vs float64: float32 epilogue (int8 accumulates exactly; fp8 in float32)

  def make_inputs(self, rng, m, n, k, *, per_tensor=False):
    if self.dtype == jnp.int8:
      x, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (n, k))
    else:
      x, w = rng.standard_normal((m, k)) * 4, rng.standard_normal((n, k)) * 4
    xs = rng.uniform(0.001, 0.1, (1, 1) if per_tensor else (m, 1))
    ws = rng.uniform(0.001, 0.1, (1, 1) if per_tensor else (1, n))
    return (jnp.asarray(x, self.dtype), jnp.asarray(w, self.dtype), jnp.asarray(xs, jnp.float32),
            jnp.asarray(ws, jnp.float32))

  def __str__(self):
    return self.name


SCALED_KINDS = (
    Kind("int8", i8.int8_matmul, i8.reference, i8.autotune_configs, jnp.dtype(jnp.int8), np.int8, 1e-6),
    Kind("fp8_e4m3", f8.fp8_matmul, f8.reference, f8.autotune_configs, jnp.dtype(jnp.float8_e4m3fn),
         ml_dtypes.float8_e4m3fn, 1e-5),
    Kind("fp8_e5m2", f8.fp8_matmul, f8.reference, f8.autotune_configs, jnp.dtype(jnp.float8_e5m2),
         ml_dtypes.float8_e5m2, 1e-5))
