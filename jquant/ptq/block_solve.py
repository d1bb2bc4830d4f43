"""Block-wise solves: methods that learn every linear of a block at once against the block's output
(`jquant.ptq.methods.AutoRound`). The pipeline calls `learned_block` for a method whose ``solves_blocks`` is True.

The block runs on the quantized model's inputs (the outputs of the already-quantized earlier blocks); its float
version on the same inputs gives the targets. The learning program is compiled once per (model program, linear
paths, method, shapes): alike blocks of a model share it (``block_fn`` models, see `jquant.ptq.capture`).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from jquant.core.quantize import dequantize
from jquant.ptq.access import copy_dicts, get_block, kernel_view, linear_leaves, put_block, set_kernel
from jquant.ptq.capture import _block_fn, _program_index, capture_block, forward_block, token_mask
from jquant.report import LayerReport, layer_sqnr

TRACES = {"count": 0}      # how many times a learning program was traced (tests check one per block shape)


def _rows(tree, r0, n: int, b: int):
  """Rows ``r0 : r0 + n`` of every leaf whose leading axis is the batch (size ``b``)."""
  return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, r0, n, 0)
                      if getattr(a, "ndim", 0) >= 1 and a.shape[0] == b else a, tree)


@functools.lru_cache(maxsize=16)
def _program(model, prog: int, paths: tuple, views: tuple, method):
  fn = _block_fn(model, prog)

  def learn(block, ws, xs, ys, ctxs):
    TRACES["count"] += 1
    nb, b = xs.shape[0], xs.shape[1]
    rows = method.batch_rows or b
    per = max(b // rows, 1)

    def loss_fn(w_hats, t):
      bp = copy_dicts(block)
      for p, view in zip(paths, views):
        set_kernel(bp, p, view, w_hats[p].astype(ws[p].dtype))
      i = t % (nb * per)
      k, r0 = i // per, (i % per) * rows
      x, y, c = (_rows(jax.tree.map(lambda a: a[k], z), r0, rows, b) for z in (xs, ys, ctxs))
      out = fn(bp, x, c)
      m = token_mask(x, c).astype(jnp.float32)[..., None]
      return jnp.sum(m * jnp.square(out.astype(jnp.float32) - y)) / jnp.maximum(jnp.sum(m) * y.shape[-1], 1.0)

    return method.learn(loss_fn, ws)

  return jax.jit(learn)


def learned_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries):
  """Learns every kept linear of block ``i`` at once (``method.learn``), writes QArrays to ``out`` and their
  dequantized values to ``work``; returns the block's outputs with the quantized weights."""
  full = lambda p: f"{name}/{p}" if name else p
  wb = get_block(model, work, name)
  ob = get_block(model, out, name)
  paths = tuple(p for g in groups for p in g if keep(full(p)))
  if not paths:
    return forward_block(model, i, wb, hs, ctxs)
  t0 = time.perf_counter()
  views = tuple(kernel_view(model, p) for p in paths)
  ys = forward_block(model, i, wb, hs, ctxs)              # float block on the quantized model's inputs
  ws = {p: linear_leaves(wb, p, v)["kernel"] for p, v in zip(paths, views)}
  stack = lambda seq: jax.tree.map(lambda *a: jnp.stack(a), *seq)
  prog = _program(model, _program_index(model, i), paths, views, method)
  learned, best, first = prog(wb, ws, stack(hs), stack(ys), stack(ctxs))
  best, first = float(best), float(first)
  if not (best == best and first == first):
    raise ValueError(f"autoround: the block loss of {name or 'the model'} is NaN; check the block's inputs and params.")
  _, stats = capture_block(model, i, wb, hs, ctxs, list(paths), block_name=name,   # the report's token samples
                           outputs=False)
  seconds = (time.perf_counter() - t0) / len(paths)
  for p, view in zip(paths, views):
    fp_leaves = linear_leaves(wb, p, view)
    qa = method.export(ws[p], learned[p])
    set_kernel(wb, p, view, dequantize(qa).astype(ws[p].dtype))
    set_kernel(ob, p, view, qa)
    sq = layer_sqnr(fp_leaves, linear_leaves(ob, p, view), stats[p].sample())
    k, n = ws[p].shape
    entries.append(LayerReport(full(p), method.name, method.bits, sq, best, seconds, k, n,
                               {"block_loss_rtn": first, "block_loss": best}))
  put_block(model, work, name, wb)
  put_block(model, out, name, ob)
  return forward_block(model, i, wb, hs, ctxs)
