"""The one linear layer every jquant model uses.

Why Flax **Linen** (not NNX) for the real models: the sequential PTQ pipeline captures the input of every linear
layer with ``flax.linen.intercept_methods`` (see ``jquant/ptq/protocol.py``), parameters are plain nested dicts (a
pytree) in which ``jq.quantize_params`` can put ``QArray`` leaves without touching the module code, and a block can
be run on its own with ``Block(...).apply({"params": params[name]}, ...)``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jquant.ops import qmatmul

__all__ = ["Linear", "MatmulFn", "default_matmul"]

# matmul(x, kernel) -> y with x (..., in), kernel (in, out) a plain array or a jquant.QArray, y (..., out).
MatmulFn = Callable[[jax.Array, Any], jax.Array]


# x @ kernel for a float kernel, jquant.ops.qdot for a QArray / PreparedWeight (one definition: jquant.ops.qmatmul)
default_matmul = qmatmul


class Linear(nn.Module):
  """``y = (x * input_scale) @ kernel + bias``.

  Params (paths relative to this module):
    kernel: (in, out), a float array, or a ``jquant.QArray`` (or ``jquant.ops.PreparedWeight``) of that logical
      shape, multiplied with ``jquant.ops.qdot``.
    bias: (out,), present when ``use_bias``.
    input_scale: (in,), optional. Used whenever it is present in the params (PTQ methods such as AWQ or
      SmoothQuant add it where the scale cannot be folded into the previous layer); created at init only when
      ``use_input_scale``.

  Attributes:
    features: output width ``out``.
    use_bias: whether the layer has a bias.
    use_input_scale: create ``input_scale`` (ones) at init.
    matmul: optional hashable ``matmul(x, kernel) -> y`` that replaces the matmul (e.g. W8A8 or LLM.int8
      simulations). ``None`` uses ``x @ kernel`` or ``jquant.ops.qdot`` for a QArray kernel.
  """

  features: int
  use_bias: bool = True
  use_input_scale: bool = False
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x: (..., in). Returns: (..., out)."""
    in_features = x.shape[-1]
    if self.has_variable("params", "kernel"):
      # get_variable, not param: param() checks the stored value against the initializer's shape, which a
      # QArray pytree would fail.
      kernel = self.get_variable("params", "kernel")
    else:
      kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features), jnp.float32)
    if kernel.shape != (in_features, self.features):
      raise ValueError(f"Linear {'/'.join(self.path)}: kernel has shape {tuple(kernel.shape)}, expected "
                       f"(in, out) = {(in_features, self.features)} for an input of shape {x.shape}. Check that "
                       f"the params match the model config (Flax kernels are (in, out), torch weights (out, in)).")
    if self.has_variable("params", "input_scale") or self.use_input_scale:
      s = self.param("input_scale", nn.initializers.ones, (in_features,), jnp.float32)
      x = x * s.astype(x.dtype)
    fn = self.matmul if self.matmul is not None else default_matmul
    y = fn(x, kernel)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(y.dtype)
    return y
