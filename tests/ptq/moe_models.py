"""A small Mixtral-style Linen model for the MoE tests: a router (Dense with bias) picks the top-2 of E experts per
token; tokens are sorted by expert and the stacked expert kernels (E, K, N) run through ``jax.lax.ragged_dot``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Experts(nn.Module):
  """Stacked expert kernels (E, K, N), called as (x sorted by expert, group_sizes)."""

  num: int
  features: int

  @nn.compact
  def __call__(self, x, group_sizes):
    k = self.param("kernel", nn.initializers.lecun_normal(batch_axis=(0,)), (self.num, x.shape[-1], self.features))
    return jax.lax.ragged_dot(x, k, group_sizes)


class MoE(nn.Module):
  num: int = 8
  d: int = 32
  f: int = 64
  top_k: int = 2

  @nn.compact
  def __call__(self, h):
    b, t, d = h.shape
    x = nn.RMSNorm(name="norm")(h).reshape(-1, d)
    logits = nn.Dense(self.num, name="router")(x)
    weights, idx = jax.lax.top_k(logits, self.top_k)
    weights = jax.nn.softmax(weights, axis=-1)
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    xs = jnp.repeat(x, self.top_k, axis=0)[order]
    gs = jnp.bincount(flat, length=self.num).astype(jnp.int32)
    g = Experts(self.num, self.f, name="gate")(xs, gs)
    u = Experts(self.num, self.f, name="up")(xs, gs)
    y = Experts(self.num, d, name="down")(nn.silu(g) * u, gs)
    y = jnp.zeros_like(y).at[order].set(y).reshape(-1, self.top_k, d)
    return h + jnp.sum(y * weights[..., None], axis=1).reshape(b, t, d)


class TinyMixtral(nn.Module):
  vocab: int = 64
  d: int = 32
  n: int = 2
  num: int = 8

  @nn.compact
  def __call__(self, ids):
    h = nn.Embed(self.vocab, self.d, name="embed")(ids)
    for i in range(self.n):
      h = MoE(self.num, self.d, name=f"layers_{i}")(h)
    return h


def starve(params, experts=(6, 7), bias: float = -8.0):
  """Router biases that leave ``experts`` (nearly) without tokens."""
  params = jax.tree.map(lambda a: a, params)
  for name in [k for k in params if k.startswith("layers_")]:
    b = params[name]["router"]["bias"]
    params[name]["router"]["bias"] = b.at[jnp.asarray(experts)].set(bias)
  return params
