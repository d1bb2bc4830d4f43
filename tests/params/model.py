"""A small but real Flax transformer (Linen) used by the params tests: embeddings, attention, MLP, norms,
a scanned (stacked) layer and stacked experts."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Block(nn.Module):
  d: int
  heads: int

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm(name="attn_norm")(x)
    q = nn.Dense(self.d, name="q_proj")(h)
    k = nn.Dense(self.d, name="k_proj")(h)
    v = nn.Dense(self.d, name="v_proj")(h)
    b, t, _ = x.shape
    split = lambda a: a.reshape(b, t, self.heads, -1)
    att = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / jnp.sqrt(self.d // self.heads)
    att = nn.softmax(att + jnp.where(jnp.tril(jnp.ones((t, t))), 0.0, -1e9), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", att, split(v)).reshape(b, t, self.d)
    x = x + nn.Dense(self.d, name="o_proj")(o)
    h = nn.LayerNorm(name="mlp_norm")(x)
    h = nn.gelu(nn.Dense(4 * self.d, name="up_proj")(h))
    return x + nn.Dense(self.d, name="down_proj")(h)


class TinyLM(nn.Module):
  vocab: int = 64
  d: int = 128
  heads: int = 4
  layers: int = 2
  experts: int = 4

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.d, name="embed")(tokens)
    for i in range(self.layers):
      x = Block(self.d, self.heads, name=f"layers_{i}")(x)
    # stacked experts: kernel (E, d, d)
    experts = self.param("experts", nn.initializers.lecun_normal(batch_axis=(0,)), (self.experts, self.d, self.d))
    x = x + jnp.einsum("btd,edf->btf", x, experts) / self.experts
    x = nn.LayerNorm(name="final_norm")(x)
    return nn.Dense(self.vocab, name="lm_head")(x)


def init_params(seed: int = 0, **kw):
  model = TinyLM(**kw)
  tokens = jnp.zeros((1, 8), jnp.int32)
  return model, model.init(jax.random.key(seed), tokens)["params"]
