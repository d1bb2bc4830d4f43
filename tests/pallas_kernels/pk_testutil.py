"""Helpers shared by the kernel tests: CUDA lowering from a CPU host, GPU detection, tolerances, input makers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractDevice, AbstractMesh

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
