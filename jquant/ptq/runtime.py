"""Run a user's unmodified Flax Linen model with quantized params.

`QuantizedRuntime(module, matmul=None).apply(variables, *args, **kwargs)` runs ``module.apply`` under
``nn.intercept_methods``: every ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Einsum`` whose kernel is a `QArray`
(or that carries an ``input_scale``) is computed by jquant instead of Flax: the input is laid out as (tokens, K)
(contracted axes last), multiplied by ``input_scale`` when present, then ``matmul(x, kernel_as_(K, N))`` --
`jquant.ops.qdot` by default (the Pallas kernels on a GPU, XLA elsewhere; no float copy of the weight outside the
matmul), or a W8A8 / LLM.int8 matmul -- and reshaped to Flax's output layout, plus the bias. Linears with float
kernels run as Flax runs them (or through ``matmul`` when one is given). Works under ``jax.jit``; ``nn.scan``-ned
layers receive one layer's slice of a stacked QArray. Stacked MoE experts (a (E, K, N) kernel called as
``(x, group_sizes)``, `jquant.ptq.moe`) run through `jquant.ops.ragged_qdot`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.paths import join
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize
from jquant.core.views import qarray_to_matrix
from jquant.ops import qmatmul, ragged_qdot
from jquant.ptq.linen_model import linear_site
from jquant.ptq.traced import flatten_input, group_sizes_of

__all__ = ["QuantizedRuntime", "quantized_linear"]

def _einsum_layout(eq: str) -> tuple[str, str]:
  """(src, dst) subscripts taking (x free axes..., kernel output axes...) to the einsum's output order."""
  lhs, rest = eq.split(",")
  rhs, out = rest.split("->")
  contracted = {c for c in rhs if c in lhs}
  free = "".join(c for c in lhs.replace("...", ".") if c not in contracted).replace(".", "...")
  return free + "".join(c for c in rhs if c not in lhs), out


class QuantizedRuntime:
  """The user's Linen ``module`` with quantized linears (see the module docstring).

  Args:
    module: the unmodified Linen module.
    matmul: optional hashable ``matmul(x (M, K), kernel (K, N)) -> (M, N)`` for every linear (W8A8, LLM.int8);
      ``None``: `jquant.ops.qdot` for QArray kernels, Flax's own computation for float ones.
  """

  def __init__(self, module: nn.Module, matmul: Callable | None = None):
    self.module = module
    self.matmul = matmul

  def __repr__(self) -> str:
    return f"QuantizedRuntime({type(self.module).__name__}, matmul={self.matmul!r})"

  def apply(self, variables, *args, **kwargs):
    """``module.apply(variables, *args, **kwargs)`` with the quantized linears computed by jquant."""
    with nn.intercept_methods(self._interceptor):
      return self.module.apply(variables, *args, **kwargs)

  def _interceptor(self, next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != "__call__" or not mod.has_variable("params", "kernel"):
      return next_fun(*args, **kwargs)
    kernel = mod.get_variable("params", "kernel")
    has_scale = mod.has_variable("params", "input_scale")
    if not isinstance(kernel, QArray) and not has_scale and self.matmul is None:
      return next_fun(*args, **kwargs)
    site, why = linear_site(mod, args, kwargs)
    if site is None:
      if isinstance(kernel, QArray) or has_scale:
        raise NotImplementedError(f"{join(mod.path)}: quantized params on a layer jquant cannot run: {why}.")
      return next_fun(*args, **kwargs)
    if site.experts:           # stacked MoE experts: the grouped quantized matmul
      dtype = mod.dtype if getattr(mod, "dtype", None) is not None else args[0].dtype
      return ragged_qdot(args[0], kernel, group_sizes_of(args, kwargs), out_dtype=dtype)
    return self._linear(mod, site, args[0], kernel, has_scale)

  def _linear(self, mod, site, x, kernel, has_scale):
    dtype = mod.dtype or jnp.result_type(x.dtype, jnp.dtype(kernel.dtype) if isinstance(kernel, QArray)
                                         else kernel.dtype)
    scale = mod.get_variable("params", "input_scale") if has_scale else None
    bias = None
    if site.has_bias:
      bias = mod.get_variable("params", "bias")
      if site.kind == "einsum":
        _, shape = mod._get_bias_shape(site.einsum_str, x, np.broadcast_to(np.float32(0), site.view.shape))  # pylint: disable=protected-access
        bias = bias.reshape(shape)
    return quantized_linear(site, x, kernel, scale, bias, dtype, self.matmul)


def quantized_linear(site, x: jax.Array, kernel: Any, input_scale: Any, bias: Any, dtype,
                     matmul: Callable | None = None) -> jax.Array:
  """One linear computed by jquant: ``x`` laid out as (tokens, K), times ``input_scale`` (kernel-rank or (K,)),
  ``matmul(x, kernel as (K, N))`` (`jquant.ops.qdot` for a QArray by default), reshaped to the layer's output layout
  (``site``), plus ``bias`` (already broadcastable to that output)."""
  view = site.view
  x = x.astype(dtype)
  x2 = flatten_input(x, site.x_axes)
  if input_scale is not None:
    s = view.vector_from_kernel_rank(input_scale)
    x2 = x2 * s.astype(x2.dtype)
  if isinstance(kernel, QArray):
    try:
      w2 = qarray_to_matrix(kernel, view)
    except ValueError:       # a layout the matmul kernels do not take (e.g. quantize_params' own rules): the
      w2 = view.to_matrix(dequantize(kernel, dtype))     # dequantize fuses into the jit-compiled matmul
  else:
    w2 = view.to_matrix(kernel)
  y2 = (matmul or qmatmul)(x2, w2)
  src = {a % x.ndim for a in site.x_axes}
  free_shape = tuple(x.shape[a] for a in range(x.ndim) if a not in src)
  y = y2.reshape(free_shape + view.out_shape).astype(dtype)
  if site.kind == "einsum":
    a, b = _einsum_layout(site.einsum_str)
    y = jnp.einsum(f"{a}->{b}", y)
  if bias is not None:
    y = y + bias.astype(dtype)
  return y
