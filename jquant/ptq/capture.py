"""Captures the inputs of a block's linear layers by interception (the model's ``intercept`` context: Linen's
``intercept_methods`` by default, NNX's hooked modules for `jquant.ptq.nnx_model.NNXModel`) and reduces them to
streaming statistics (no activations are kept except a bounded token subsample).

For every distinct input tensor (q/k/v share one, gate/up share one) and over the real tokens only (a ``"mask"``
(B, T) in the block context marks them, e.g. BERT padding), one calibration batch gives:

* ``gram``: (K, K) ``sum x x^T`` (GPTQ's Hessian up to a scale; AWQ's output-error metric),
* ``abs_sum`` (K,) and ``count``: AWQ's mean |x|,
* ``abs_max`` (K,): SmoothQuant's act scales,
* a strided token subsample (for the report's output SQNR and activation-quantized matmuls),
* a flag for NaN/inf activations.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jquant.ops.ragged import row_groups
from jquant.ptq.distributed import host_array
from jquant.ptq.linen_model import linen_intercept

_HI = jax.lax.Precision.HIGHEST
PyTree = Any


def token_mask(hidden: jax.Array, ctx: PyTree) -> jax.Array:
  """(B, T) bool mask of real tokens: ``ctx["mask"]`` when the context has one of that shape, else all True."""
  m = ctx.get("mask") if isinstance(ctx, dict) else None
  if m is not None and tuple(m.shape) == tuple(hidden.shape[:2]):
    return m.astype(bool)
  return jnp.ones(hidden.shape[:2], bool)


@dataclasses.dataclass
class InputStats:
  """Accumulated statistics of one linear input over the calibration set (host-side container)."""

  gram: jax.Array
  abs_sum: jax.Array
  abs_max: jax.Array
  count: float = 0.0
  samples: list = dataclasses.field(default_factory=list)
  bad_batch: int = -1
  expert_counts: np.ndarray | None = None   # stacked experts: (E,) tokens routed to each (gram (E, K, K), ...)
  sample_experts: list = dataclasses.field(default_factory=list)

  @property
  def mean_abs(self) -> jax.Array:
    return self.abs_sum / max(self.count, 1.0)

  def sample(self) -> np.ndarray:
    """(S, K) subsampled real tokens (stacked experts: sorted by expert, see `sample_groups`)."""
    return np.concatenate(self.samples, axis=0)

  def sample_groups(self) -> np.ndarray:
    """Stacked experts: the expert of each row of `sample`."""
    return np.concatenate(self.sample_experts, axis=0)


def _block_fn(model, i: int) -> Callable:
  """fn(block_params, hidden, ctx) for block ``i``."""
  if hasattr(model, "block_fn"):
    return model.block_fn(i)
  return lambda bp, h, ctx: model.apply_block(i, bp, h, ctx)


def _program_index(model, i: int) -> int:
  """Models with a ``block_fn`` hook have alike blocks that share one compiled program (key 0); others compile
  per block."""
  if hasattr(model, "block_fn"):
    return i if i == "rest" else 0
  return i


def _default_input(mod, args: tuple):
  """A model without a ``capture_input`` hook: the first argument of any module owning a ``kernel`` param."""
  return args[0] if args and mod.has_variable("params", "kernel") else None


def _reduce_experts(x: jax.Array, group_sizes: jax.Array, stride: int):
  """Per-expert statistics of an experts call: x (M, K) sorted by expert, ``group_sizes`` (E,)."""
  xf = x.astype(jnp.float32)
  e = group_sizes.shape[0]
  gs = group_sizes.astype(jnp.int32)
  rows = row_groups(gs, xf.shape[0])
  real = rows < e
  finite = jnp.all(jnp.isfinite(jnp.where(real[:, None], xf, 0.0)))
  xz = jnp.where(real[:, None] & jnp.isfinite(xf), xf, 0.0)
  # sum over the rows of expert e of x x^T: the transpose of ragged_dot (a grouped GEMM on GPU / TPU)
  _, vjp = jax.vjp(lambda w: jax.lax.ragged_dot(xz, w, gs, precision=_HI), jnp.zeros((e,) + xz.shape[1:] * 2))
  ax = jnp.abs(xz)
  seg = lambda v, op: op(v, rows, num_segments=e + 1)[:e]
  counts = seg(real.astype(jnp.float32), jax.ops.segment_sum)
  return dict(gram=vjp(xz)[0], abs_sum=seg(ax, jax.ops.segment_sum), abs_max=seg(ax, jax.ops.segment_max),
              count=jnp.sum(counts), expert_count=counts, finite=finite, sample=xf[::stride],
              sample_mask=real[::stride], sample_expert=rows[::stride])


def _reduce(x: jax.Array, mask: jax.Array, stride: int):
  if isinstance(x, tuple):           # stacked experts: (x, group_sizes)
    return _reduce_experts(x[0], x[1], stride)
  k = x.shape[-1]
  xf = x.reshape(-1, k).astype(jnp.float32)
  mf = mask.reshape(-1)
  if mf.shape[0] != xf.shape[0]:      # a linear that does not run per token of the block input (pooled, ...)
    mf = jnp.ones((xf.shape[0],), bool)
  finite = jnp.all(jnp.isfinite(jnp.where(mf[:, None], xf, 0.0)))
  xz = jnp.where(mf[:, None] & jnp.isfinite(xf), xf, 0.0)
  gram = jnp.matmul(xz.T, xz, precision=_HI)
  ax = jnp.abs(xz)
  return dict(gram=gram, abs_sum=jnp.sum(ax, axis=0), abs_max=jnp.max(ax, axis=0),
              count=jnp.sum(mf.astype(jnp.float32)), finite=finite, sample=xf[::stride], sample_mask=mf[::stride])


@functools.lru_cache(maxsize=64)
def _capture_program(model, i: int, paths: tuple[str, ...], stride: int, outputs: bool):
  """(jitted fn(bp, hidden, ctx) -> (out, reduced), box) where box["index"] maps path -> unique-input index.

  ``outputs`` False: ``out`` is None, and XLA drops whatever the block computes after the last captured input
  (o_proj's capture stops after the attention, q/k/v's after the input norm)."""
  fn = _block_fn(model, i)
  box: dict[str, Any] = {}

  def run(bp, hidden, ctx):
    seen: dict[str, Any] = {}

    grab = getattr(model, "capture_input", None)

    def interceptor(next_fun, args, kwargs, p, mod):
      if p in paths and p not in seen:
        x = grab(mod, args, kwargs) if grab is not None else _default_input(mod, args)
        if x is not None:
          seen[p] = (args[0], x)
      return next_fun(*args, **kwargs)

    with getattr(model, "intercept", linen_intercept)(interceptor):
      out = fn(bp, hidden, ctx)
    missing = [p for p in paths if p not in seen]
    if missing:
      raise ValueError(f"linear layers {missing} were not called by the block; linear_groups() must name the "
                       f"Linear modules of apply_block by their paths relative to the block, e.g. 'mlp/up_proj'.")
    mask = token_mask(hidden, ctx) if hasattr(hidden, "shape") else jnp.ones((1,), bool)
    uniq: list[Any] = []
    index = {}
    for p in paths:                                   # q/k/v receive the same traced array: reduce it once
      for j, u in enumerate(uniq):
        if u[0] is seen[p][0]:
          index[p] = j
          break
      else:
        index[p] = len(uniq)
        uniq.append(seen[p])
    box["index"] = index
    return (out if outputs else None), [_reduce(u[1], mask, stride) for u in uniq]

  return jax.jit(run), box


def capture_block(model, i: int, block_params: PyTree, hiddens: Sequence[jax.Array], ctxs: Sequence[PyTree],
                  paths: Sequence[str], max_samples: int = 2048, block_name: str = "",
                  outputs: bool = True) -> tuple[list, dict]:
  """Runs block ``i`` on every calibration batch and accumulates the inputs of the linears ``paths``.

  Args:
    model: the BlockwiseModel.
    i: block index.
    block_params: params of the block.
    hiddens: per-batch block inputs (B, T, D).
    ctxs: per-batch contexts from ``embed``.
    paths: linear paths relative to the block.
    max_samples: about how many real tokens to keep per input for the report (a strided subsample).
    block_name: for error messages.
    outputs: False when the caller discards the block outputs: the block then only runs up to its last captured
      input (the true-sequential captures of GPTQ cost a fraction of a block each instead of a full block).

  Returns:
    (outputs, stats): the block outputs per batch (an empty list when ``outputs`` is False) and
    ``{path: InputStats}`` (shared objects for shared inputs).

  Raises:
    ValueError: a batch held NaN/inf activations at one of the linears.
  """
  total = sum(int(np.prod(jax.tree.leaves(h)[0].shape[:2])) for h in hiddens)
  stride = max(1, -(-total // max_samples))
  jitted, box = _capture_program(model, _program_index(model, i), tuple(paths), stride, bool(outputs))
  outs, stats = [], None
  for b, (h, ctx) in enumerate(zip(hiddens, ctxs)):
    out, reduced = jitted(block_params, h, ctx)
    if stats is None:
      stats = [InputStats(gram=jnp.zeros_like(r["gram"]), abs_sum=jnp.zeros_like(r["abs_sum"]),
                          abs_max=jnp.zeros_like(r["abs_max"])) for r in reduced]
    for st, r in zip(stats, reduced):
      if not bool(r["finite"]) and st.bad_batch < 0:
        st.bad_batch = b
      st.gram = st.gram + r["gram"]
      st.abs_sum = st.abs_sum + r["abs_sum"]
      st.abs_max = jnp.maximum(st.abs_max, r["abs_max"])
      st.count += float(r["count"])
      keep = host_array(r["sample_mask"])
      st.samples.append(host_array(r["sample"])[keep])
      if "expert_count" in r:
        st.expert_counts = host_array(r["expert_count"]) + (0 if st.expert_counts is None else st.expert_counts)
        st.sample_experts.append(host_array(r["sample_expert"])[keep])
    if outputs:
      outs.append(out)
  index = box["index"]
  for p, j in index.items():
    if stats[j].bad_batch >= 0:
      raise ValueError(f"calibration batch {stats[j].bad_batch} gives NaN/inf inputs to linear "
                       f"{block_name}/{p}; check the model in float32 on that batch (or the params for NaN).")
  return outs, {p: stats[j] for p, j in index.items()}


@functools.lru_cache(maxsize=16)
def _forward_program(model, i: int):
  return jax.jit(_block_fn(model, i))


def forward_block(model, i: int, block_params: PyTree, hiddens: Sequence[jax.Array], ctxs: Sequence[PyTree]) -> list:
  """Block ``i``'s outputs for every batch (one compiled program, reused across homogeneous blocks)."""
  prog = _forward_program(model, _program_index(model, i))
  return [prog(block_params, h, c) for h, c in zip(hiddens, ctxs)]
