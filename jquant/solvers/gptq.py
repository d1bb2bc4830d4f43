"""GPTQ (Frantar et al. 2022): layer-wise quantization with second-order error feedback.

Layout: ``w`` is a Flax kernel (in, out) = (K, N). GPTQ's "columns" (the reference's ``W[:, i]``) are the K input
features, i.e. the *rows* ``w[k, :]`` here. The algorithm follows the reference ``fasterquant`` step by step:

1. the per-row grid (PerChannel / PerTensor specs) is found on the original ``w``, before dead inputs are zeroed;
2. dead inputs (``diag(H) == 0``) get ``H[k, k] = 1`` and ``w[k, :] = 0``;
3. static groups (``static_groups=True``) are found now, on this ``w`` in natural order;
4. act-order: stable descending argsort of ``diag(H)`` permutes ``w`` rows and ``H``;
5. dampening ``damp * mean(diag(H))`` is added to the diagonal (after the permutation) and H is factorized
   (retrying with more damping if that fails, see `GPTQInfo`);
6. features are quantized in order with error feedback, in blocks of ``block_size`` with lazy batch updates;
7. dynamic groups (default): at each group start the params come from the *global* ``w`` rows of that group, which
   carry the error feedback of previous blocks but not the intra-block updates of the current block (as the
   reference does; exact for group size == block size).

Arithmetic: the reference needs U = chol(H^-1, upper) (Cholesky, inverse, Cholesky). Here V = U^-1 is used instead,
which is one Cholesky of the reversed H (V V^T = H). The reference's updates ``w_j -= U[k, j] e_k`` with
``e_k = (w_k - q_k) / U[k, k]`` are equivalent to ``w_k = w0_k + r_k / V[k, k]`` with
``r_k = sum_{j<k} V[j, k] (w0_j - q_j)`` (w0: the weight before any feedback), which is accumulated with the same
block structure (rank-1 updates inside 16-feature sub-blocks, one matmul per sub-block and per later block of rows).
The block-start state that dynamic groups read is ``w0 + V_RR^-T r`` over the rows R of the block (one small
matmul with a triangular inverse precomputed per block). Codes match a float64 transcription of the reference loop (tests/solvers/oracles.py).

The grid is the spec's own jq grid (see `jquant.core.ranges.scale_from_range`): symmetric AbsMax ``absmax / qmax``
over ``[qmin, qmax]``, or asymmetric MinMax with the range widened to contain 0. The asymmetric grid equals the
reference's default grid (UINT4 codes identical, INT4 codes shifted by 8). The reference's *symmetric* mode is a
different grid (scale ``2 max / 15`` with zero point 8, clipping +max to 7/8 of it); jquant does not replicate it.
An all-zero group gets scale 1 here (the reference uses the range [-1, 1]); both dequantize to exact zeros.
Any calibration method of the spec (MSE, Percentile, ...) is applied per group slab.

Compilation: everything runs under one `jax.jit` per (shape, spec, block_size, act_order, static_groups);
features and blocks are `lax.fori_loop`s, so compile time does not grow with K. ``damp`` is a traced argument.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jquant.core.calibration_methods import MSE
from jquant.core.granularity import PerChannel, PerGroup, PerTensor
from jquant.core.qarray import QArray
from jquant.core.quantize import (check_float_array, compute_qparams, dequantize_values, quantize,
                                  quantize_checked, quantize_with_params, scale_f32,
                                  unusable_scale_message)
from jquant.core.spec import QuantSpec
from jquant.solvers.grid import check_importance
from jquant.solvers.hessian import check_hessian, reverse_cholesky, rtn_fallback_reason
from jquant.solvers.sharded import column_sharding, solve_by_columns

_HI = lax.Precision.HIGHEST


class GPTQInfo(NamedTuple):
  """Diagnostics of one GPTQ solve (arrays, so that the solver stays jittable).

  Attributes:
    damp_used: relative dampening that made the Cholesky factorization succeed: ``damp``, else
      ``10 * max(damp, 1e-3)``, else ``100 * max(damp, 1e-3)``.
    ok: False if the factorization failed even then (the Hessian is not positive semi-definite).
    num_dead: number of dead input features (``diag(H) == 0``).
    perm: the act-order permutation (identity without act-order), shape (K,).
  """

  damp_used: jax.Array
  ok: jax.Array
  num_dead: jax.Array
  perm: jax.Array


def _group_size(spec: QuantSpec, k: int) -> int | None:
  """Group size along K, or None for per-row-constant grids; ValueError for grids GPTQ cannot run."""
  g = spec.granularity
  if isinstance(g, PerGroup) and not g.batch_axes and g.axis in (0, -2):
    if k % g.size:
      raise ValueError(f"gptq: group size {g.size} does not divide the {k} input features of w (K, N); choose a "
                       f"group size that divides {k} (e.g. 64 or 32), or use PerChannel(axis=-1).")
    return g.size
  if isinstance(g, PerChannel) and not g.batch_axes and g.axis in (1, -1):
    return None
  if isinstance(g, PerTensor) and not g.batch_axes:
    return None
  raise ValueError(f"gptq: granularity {g} is not supported for a kernel w of shape (K, N); use "
                   "PerGroup(axis=0, size=G) (groups along the input features), PerChannel(axis=-1) (one scale per "
                   "output column) or PerTensor().")


@functools.partial(jax.jit, static_argnames=("spec", "block_size", "act_order", "static_groups"))
def gptq_solve(w, hessian, damp, *, spec: QuantSpec, block_size: int = 128, act_order: bool = False,
               static_groups: bool = False, importance=None):
  """The jittable GPTQ core (no host-side checks); see `gptq` for the arguments.

  Returns:
    (qa, losses, info): the `QArray` (original feature order; ``g_idx`` set for act-order with dynamic groups),
    per-weight losses ``(w - q)^2 / d^2 / 2`` of shape (K, N) in original order, and a `GPTQInfo`.
  """
  kdim, ndim = w.shape
  qt = spec.qtype
  g = _group_size(spec, kdim)
  has_zp = not spec.symmetric
  in_dtype = str(jnp.dtype(w.dtype))
  w = w.astype(jnp.float32)
  h = hessian.astype(jnp.float32)
  # GPTQ is invariant to the scale of H; a near-zero Hessian (a layer that saw few or tiny activations) would lose
  # its precision in subnormal float32 products, so H is scaled by a power of two (exact) to max diag ~ 1 and the
  # losses scaled back.
  _, h_exp = jnp.frexp(jnp.max(jnp.diagonal(h)))
  h_exp = jnp.where(jnp.max(jnp.diagonal(h)) > 0, h_exp, 0)

  imp = None if importance is None else importance.astype(jnp.float32)[:, None]     # (K, 1) error weights
  if g is None:                                   # per-row grid: found before dead inputs are zeroed
    fixed_s, fixed_z = compute_qparams(w, spec, imp)
  diag = jnp.diagonal(h)
  dead = diag == 0
  idx = jnp.arange(kdim)
  h = h.at[idx, idx].set(jnp.where(dead, 1.0, diag))
  h = jnp.ldexp(h, -h_exp)      # after the dead-input fix, so the whole H (its 1s included) scales exactly
  w = jnp.where(dead[:, None], 0.0, w)
  if g is not None and static_groups:
    stat_s, stat_z = compute_qparams(w, spec, imp)     # (K/g, N), natural order
  if act_order:
    perm = jnp.argsort(-jnp.diagonal(h), stable=True)
    w = w[perm]
    h = h[perm][:, perm]
  else:
    perm = idx
  v, damp_used, ok = reverse_cholesky(h, jnp.asarray(damp, jnp.float32))

  # Inverse-free form of the reference loop. With the error e_k = (w_k - q_k) / U_kk and U = V^-1, the reference's
  # updates give w0 = q + U^T e, i.e. e = V^T (w0 - q); hence the current weight of feature k is
  #   w_k = w0_k + r_k / V_kk,   r_k = sum_{j<k} V[j, k] (w0_j - q_j),
  # and the loss (w_k - q_k)^2 / U_kk^2 / 2 = ((w_k - q_k) V_kk)^2 / 2. r is accumulated like the reference's lazy
  # batch updates: in-block rank-1 (here two-level) updates, then one matmul per later block of rows.
  bs = block_size
  sub = 16 if bs % 16 == 0 else bs               # two-level blocking inside a block (same arithmetic, less traffic)
  unit = bs if g is None else bs * g // math.gcd(bs, g)
  kp = -(-kdim // unit) * unit
  pad = kp - kdim
  dyn = g is not None and not static_groups
  if dyn:
    # m: group params computed per block (every group starting inside the block, plus spares that are rewritten by
    # their own block); win: rows from the block start whose block-start state is needed to cover them.
    m = bs // g if bs % g == 0 else -(-bs // g) + 1
    win = bs if bs % g == 0 else (m + 1) * g
  else:
    m, win = 0, 0
  w0 = jnp.pad(w, ((0, pad + win), (0, 0)))
  imp0 = None if imp is None else jnp.pad(imp[perm], ((0, pad + win), (0, 0)), constant_values=1.0)
  # Only V^T (lower-triangular) is sliced below: every product is then a plain row-major matmul (slicing a
  # transposed V made XLA keep a column-major copy of it and re-layout it once per block).
  vt = jnp.pad(v.T, ((0, pad + win), (0, pad + win)))
  if pad + win:
    tail = jnp.arange(kdim, kp + win)
    vt = vt.at[tail, tail].set(1.0)                # padded features: identity (no coupling, unit diagonal)
  if dyn:   # (V^T)^-1 of each block's window, up front (a solve inside the loop would pin V^T to a column-major layout)
    eye_w = jnp.eye(win, dtype=jnp.float32)
    win_inv = jax.vmap(lambda i: jax.scipy.linalg.solve_triangular(
        lax.dynamic_slice(vt, (i, i), (win, win)), eye_w, lower=True))(jnp.arange(kp // bs) * bs)
  src_group = jnp.pad(perm, (0, pad)) // (g or 1)   # natural group of each permuted feature (static groups)
  nblocks = kp // bs
  ngroups = kp // g if g is not None else 1

  def row_params(c, store):
    """(scale, zp) of shape (1, N) / (1, 1) for permuted feature c."""
    if dyn:
      j = c // g
      return (lax.dynamic_slice_in_dim(store[0], j, 1, 0),
              lax.dynamic_slice_in_dim(store[1], j, 1, 0) if has_zp else None)
    if g is not None:                              # static groups: the natural group of the feature
      j = src_group[c]
      return (lax.dynamic_slice_in_dim(stat_s, j, 1, 0),
              lax.dynamic_slice_in_dim(stat_z, j, 1, 0) if has_zp else None)
    return fixed_s, fixed_z

  def block_body(b, carry):
    r, qcodes, losses, store = carry
    i1 = b * bs
    if dyn:
      # Params of the groups starting in this block come from the reference's *global* w: the feedback of the
      # previous blocks only. With r_k = sum_{j < i1} V[j, k] (w0_j - q_j) (what r holds at the block start), that
      # state is w0 + V_RR^-T r over the rows R >= i1; only a window of rows is needed (its inverse is precomputed).
      # Groups written here that start in a later block are rewritten there before use.
      j0 = -(-i1 // g)
      gw = lax.dynamic_slice_in_dim(w0, i1, win, 0) + jnp.matmul(
          win_inv[b], lax.dynamic_slice_in_dim(r, i1, win, 0), precision=_HI)
      s_new, z_new = compute_qparams(lax.dynamic_slice_in_dim(gw, j0 * g - i1, m * g, 0), spec,
                                     None if imp0 is None else lax.dynamic_slice_in_dim(imp0, j0 * g, m * g, 0))
      store = (lax.dynamic_update_slice_in_dim(store[0], s_new, j0, 0),
               lax.dynamic_update_slice_in_dim(store[1], z_new if has_zp else jnp.zeros_like(s_new), j0, 0))
    w01 = lax.dynamic_slice_in_dim(w0, i1, bs, 0)
    r1 = lax.dynamic_slice_in_dim(r, i1, bs, 0)
    v1t = lax.dynamic_slice(vt, (i1, i1), (bs, bs))                 # V^T of the block (lower)

    def col_body(i, st):
      """One feature: quantize its current weight, feed (w0 - q) into the rest of its sub-block."""
      rs, delta1, q1, l1, r0 = st
      s, z = row_params(i1 + i, store)
      vkk = v1t[i, i]
      w0row = lax.dynamic_slice_in_dim(w01, i, 1, 0)
      row = w0row + lax.dynamic_slice_in_dim(rs, i - r0, 1, 0) / vkk     # (1, N) current weight
      blk = (1, ndim // s.shape[1])
      q = quantize_with_params(row, s, z, qt, blk)
      deq = dequantize_values(q, s, z, qt, blk)
      delta = w0row - deq
      rs = rs + lax.dynamic_slice(v1t, (r0, i), (sub, 1)) * delta       # V[i, :] is zero left of i
      delta1 = lax.dynamic_update_slice_in_dim(delta1, delta, i, 0)
      q1 = lax.dynamic_update_slice_in_dim(q1, q.astype(jnp.float32), i, 0)
      e = (row - deq) * vkk
      l1 = lax.dynamic_update_slice_in_dim(l1, e * e / 2, i, 0)
      return rs, delta1, q1, l1, r0

    def sub_body(t, st):
      """A sub-block of `sub` features, then its deltas into the later rows of the block (one matmul)."""
      r1, delta1, q1, l1 = st
      r0 = t * sub
      rs = lax.dynamic_slice_in_dim(r1, r0, sub, 0)
      _, delta1, q1, l1, _ = lax.fori_loop(r0, r0 + sub, col_body, (rs, delta1, q1, l1, r0))
      vs = lax.dynamic_slice_in_dim(v1t, r0, sub, 1)                   # (bs, sub) = V[sub rows, block]^T
      vs = jnp.where(jnp.arange(bs)[:, None] >= r0 + sub, vs, 0.0)
      ds = lax.dynamic_slice_in_dim(delta1, r0, sub, 0)
      r1 = r1 + jnp.matmul(vs, ds, precision=_HI)
      return r1, delta1, q1, l1

    zeros = jnp.zeros((bs, ndim), jnp.float32)
    _, delta1, q1, l1 = lax.fori_loop(0, bs // sub, sub_body, (r1, zeros, zeros, zeros))
    qcodes = lax.dynamic_update_slice_in_dim(qcodes, q1, i1, 0)
    losses = lax.dynamic_update_slice_in_dim(losses, l1, i1, 0)

    def trail(j, r):                                                  # lazy batch update, one block of rows at a time
      c0 = j * bs
      vc = lax.dynamic_slice(vt, (c0, i1), (bs, bs))
      rc = lax.dynamic_slice_in_dim(r, c0, bs, 0)
      return lax.dynamic_update_slice_in_dim(r, rc + jnp.matmul(vc, delta1, precision=_HI), c0, 0)

    r = lax.fori_loop(b + 1, nblocks, trail, r)
    return r, qcodes, losses, store

  store0 = (jnp.ones((ngroups + m, ndim), jnp.float32), jnp.zeros((ngroups + m, ndim), jnp.float32))
  big = jnp.zeros((kp, ndim), jnp.float32)
  _, qcodes, losses, store = lax.fori_loop(0, nblocks, block_body, (jnp.zeros_like(w0), big, big, store0))

  qcodes, losses = qcodes[:kdim], jnp.ldexp(losses[:kdim], h_exp)
  if act_order:
    inv = jnp.argsort(perm)
    qcodes, losses = qcodes[inv], losses[inv]
  g_idx = None
  if g is None:
    scale, zp = fixed_s, fixed_z
  elif static_groups:
    scale, zp = stat_s, stat_z
  else:
    scale, zp = store[0][: kdim // g], (store[1][: kdim // g] if has_zp else None)
    if act_order:
      g_idx = (inv // g).astype(jnp.int32)
  qa = QArray(qvalue=qcodes.astype(qt.storage_dtype), scale=scale.astype(spec.scale_jnp_dtype),
              zero_point=None if zp is None else zp.astype(qt.storage_dtype), g_idx=g_idx, qtype=qt, spec=spec,
              dtype=in_dtype)
  info = GPTQInfo(damp_used=damp_used, ok=ok, num_dead=jnp.sum(dead).astype(jnp.int32), perm=perm.astype(jnp.int32))
  return qa, losses, info


def _solve_parts(w, hessian, damp, *, spec, block_size, act_order, static_groups):
  """`gptq_solve` with the QArray's arrays as a tuple (the shard_map-able form)."""
  qa, losses, info = gptq_solve(w, hessian, damp, spec=spec, block_size=block_size, act_order=act_order,
                                static_groups=static_groups)
  return (qa.qvalue, qa.scale, qa.zero_point, qa.g_idx), losses, info


@functools.lru_cache(maxsize=64)
def _parts_fn(spec, block_size, act_order, static_groups):
  """One hashable solve function per static configuration (so the sharded program compiles once per shape)."""
  return functools.partial(_solve_parts, spec=spec, block_size=block_size, act_order=act_order,
                           static_groups=static_groups)


def _from_parts(parts, losses, info, qa_like):
  spec, w = qa_like
  qv, scale, zp, g_idx = parts
  return QArray(qvalue=qv, scale=scale, zero_point=zp, g_idx=g_idx, qtype=spec.qtype, spec=spec,
                dtype=str(jnp.dtype(w.dtype))), losses, info


@jax.jit
def _count_nonfinite(x):
  return jnp.sum(~jnp.isfinite(x))


def gptq(w, hessian, spec: QuantSpec, *, block_size: int = 128, damp: float = 0.01, act_order: bool = False,
         static_groups: bool = False, importance=None) -> tuple[QArray, jax.Array]:
  """Quantizes a Flax kernel with GPTQ.

  Args:
    w: kernel of shape (K, N) = (in_features, out_features), floating.
    hessian: (K, K) Hessian of the layer inputs, e.g. from `hessian_finalize` (its scale does not matter).
    spec: the weight QuantSpec: ``PerGroup(axis=0, size=G)`` (groups along the input features),
      ``PerChannel(axis=-1)`` or ``PerTensor()``; integer, float8 or NF4 qtypes. No double_quant/stochastic rounding.
    block_size: features per lazy-update block (128 in the reference).
    damp: relative dampening (fraction of mean(diag H)); 0.01 as in the paper.
    act_order: process features in descending ``diag(H)`` order (``desc_act``). With dynamic groups the QArray
      gets ``g_idx`` so that ``jq.dequantize(qa)`` is the quantized weight in the original order.
    static_groups: with groups, find every group's params up front on the (dead-zeroed) original ``w`` in natural
      order, so act-order needs no ``g_idx``.
    importance: optional (K,) per-input-feature weights of each group's range search (the "imatrix" grid, see
      `jquant.solvers.grid`); needs a spec with an ``MSE`` calibration.

  Returns:
    ``(qa, losses)``: the `QArray` of shape (K, N) and per-weight losses ``(w - q)^2 / d^2 / 2`` of shape (K, N)
    (``losses.sum()`` is the reference's total loss; ``losses.sum(1)`` its per-feature loss).

  Raises:
    ValueError: non-2-D ``w``, a Hessian that is not (K, K), not finite, not symmetric or not positive
      semi-definite (factorization failed even with 100x damping), unsupported granularity, group size not
      dividing K, bad block_size/damp, static_groups without groups.
    TypeError: non-floating ``w`` or a ``spec`` that is not a QuantSpec.

  Warns:
    RuntimeWarning when the factorization needed more than ``damp``, and when GPTQ "fell back to RTN" because
    the Hessian is all zero (the layer saw no tokens) or below float32's smallest normal (`rtn_fallback_reason`);
    the weight is then ``jq.quantize(w, spec)``, never zeroed. A tiny but normal Hessian is rescaled (exactly, by a
    power of two) and solved as usual.

  Inside your own `jax.jit`, call `gptq_solve` and check its ``info.ok`` instead (this wrapper checks on the host).
  """
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"gptq: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  w = check_float_array(w, "w")
  hessian = check_float_array(hessian, "hessian")
  if w.ndim != 2:
    raise ValueError(f"gptq: w must be a 2-D kernel (K, N), got shape {tuple(w.shape)}; reshape stacked weights "
                     "and solve each slice.")
  if w.size == 0:
    raise ValueError(f"gptq: w of shape {tuple(w.shape)} has no elements; there is nothing to quantize (skip the "
                     "layer).")
  check_hessian(hessian, w.shape[0])
  g = _group_size(spec, w.shape[0])
  if spec.double_quant or spec.stochastic_rounding:
    raise ValueError("gptq: specs with double_quant or stochastic_rounding are not supported (the error feedback "
                     "needs the exact grid); use jq.solvers.rtn, or spec.replace(double_quant=False, "
                     "stochastic_rounding=False).")
  if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
    raise ValueError(f"gptq: block_size must be a positive int (128 in the reference), got {block_size!r}.")
  if not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
    raise ValueError(f"gptq: damp must be a finite float >= 0 (fraction of mean(diag H), e.g. 0.01), got {damp!r}.")
  if static_groups and g is None:
    raise ValueError(f"gptq: static_groups=True needs a PerGroup spec, got {spec.granularity}.")
  if importance is not None:
    importance = check_importance(importance, w.shape[0], "gptq")
    if not isinstance(spec.calibration, MSE):
      raise ValueError(f"gptq: importance weights the MSE range search of each group; the spec's calibration is "
                       f"{spec.calibration!r}. Use spec.replace(calibration=jq.MSE(...)) or grid_spec(spec, 'imatrix').")
  if not isinstance(w, jax.core.Tracer):
    n_bad = int(_count_nonfinite(w))                # on the device: no host copy of w
    if n_bad:
      raise ValueError(f"gptq: w of shape {tuple(w.shape)} has {n_bad} NaN/inf values; quantization needs finite "
                       "weights (a diverged checkpoint?).")
  reason = rtn_fallback_reason(hessian)
  if reason is not None:
    warnings.warn(f"gptq: fell back to RTN for w of shape {tuple(w.shape)}: {reason}. Its losses are reported as 0 "
                  "(no calibration signal); calibrate on data that reaches this layer to get a GPTQ solve.",
                  RuntimeWarning, stacklevel=2)
    return quantize(w, spec), jnp.zeros(w.shape, jnp.float32)
  sharded = column_sharding(w, spec)
  if sharded is None or importance is not None:    # (the imatrix search runs unsharded)
    qa, losses, info = gptq_solve(w, hessian, jnp.float32(damp), spec=spec, block_size=block_size,
                                  act_order=bool(act_order), static_groups=bool(static_groups),
                                  importance=importance)
  else:                      # N-sharded kernel: each device solves its columns (see jquant.solvers.sharded)
    core = _parts_fn(spec, block_size, bool(act_order), bool(static_groups))
    qa, losses, info = _from_parts(*solve_by_columns(
        core, w, hessian, jnp.float32(damp), mesh=sharded[0], axis=sharded[1],
        out_kinds=(("col", "col", None if spec.symmetric else "col", "rep" if act_order and g is not None
                    and not static_groups else None), "col", GPTQInfo("rep", "rep", "rep", "rep"))), qa_like=(spec, w))
  if not isinstance(info.ok, jax.core.Tracer):
    if not bool(info.ok):
      raise ValueError(f"gptq: the Cholesky factorization of the Hessian failed even with "
                       f"{100 * max(damp, 1e-3):g} x mean(diag H) damping; the Hessian is not positive semi-definite "
                       "(check that it is X^T X of the layer inputs, accumulated in float32).")
    if int(_count_nonfinite(scale_f32(qa))):    # NaN scales: a range the grid cannot hold (see jq.quantize)
      if not bool(quantize_checked(w, spec)[1]):
        raise ValueError(unusable_scale_message(w, spec, "gptq: w"))
      raise ValueError("gptq: the solve produced non-finite scales although every range of w fits the grid; the "
                       "error feedback diverged (check the Hessian's conditioning, or raise damp).")
    used = float(info.damp_used)
    if used > damp * (1 + 1e-6):
      warnings.warn(f"gptq: Cholesky failed with damp={damp:g}; succeeded with damp={used:g}.", RuntimeWarning,
                    stacklevel=2)
  return qa, losses
