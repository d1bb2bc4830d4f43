"""Matrix views of N-D linear kernels, and the QArray layouts that go with them.

Solvers (GPTQ, AWQ, ...) and matmul kernels work on (K, N) matrices: K input features, N outputs. Flax kernels are
often N-D: ``nn.DenseGeneral`` stores ``(*in_shape, *features)`` (e.g. attention heads (576, 9, 64) or an output
projection (9, 64, 576)), ``nn.Einsum`` any order of contracted and output axes. A `MatrixView` says which kernel
axes are contracted with the input (``in_axes``, flattened row-major into K) and which are outputs (``out_axes``,
flattened into N):

    w2 = view.to_matrix(w)             # (K, N) = transpose(w, in_axes + out_axes).reshape(K, N)
    w  = view.from_matrix(w2)          # back to the kernel's logical shape
    qa = view.qarray_from_matrix(qa2)  # a (K, N) QArray -> a QArray of the kernel's logical shape
    qa2 = qarray_to_matrix(qa, view)   # and back (what the runtime hands to jq.qdot)

Layouts (the QArray keeps the kernel's logical shape; groups run along the flattened K):

* a 2-D kernel keeps the solver's granularity (``PerGroup(axis=0, size=G)``, ``PerChannel(axis=-1)``,
  ``PerTensor()``);
* an N-D kernel gets ``PerGroup(axis=a - ndim, size=G)`` when it has one input axis ``a``, else ``PerBlock(tile)``
  with ``G`` split over the trailing input axes (G must divide them or be a multiple of them: e.g. (9, 64) inputs
  with G = 64 -> tile (1, 64, 1), with G = 128 -> impossible unless 64 | 128 and 2 | 9: an error names the fix);
* `stack_qarrays` stacks per-layer QArrays (scanned layers, experts) along a new leading axis with granularities
  that read the same on the stack and on each slice (negative axes / trailing tiles), so a ``nn.scan`` body sees a
  valid QArray for its layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jquant.core.granularity import PerBlock, PerChannel, PerGroup, PerTensor
from jquant.core.qarray import QArray

__all__ = ["MatrixView", "qarray_to_matrix", "stack_qarrays"]


def _group_tile(in_shape: Sequence[int], g: int) -> tuple[int, ...] | None:
  """Per-input-axis tile whose row-major flattening is contiguous groups of ``g``; None if impossible."""
  tile = [1] * len(in_shape)
  rem = g
  for i in range(len(in_shape) - 1, -1, -1):
    if rem == 1:
      break
    a = in_shape[i]
    if rem % a == 0:
      tile[i], rem = a, rem // a
    elif a % rem == 0:
      tile[i], rem = rem, 1
    else:
      return None
  return tuple(tile) if rem == 1 else None


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """Which axes of a kernel of ``shape`` are contracted (``in_axes``, -> K) and which are outputs (-> N)."""

  shape: tuple[int, ...]
  in_axes: tuple[int, ...]
  out_axes: tuple[int, ...]

  def __post_init__(self):
    axes = sorted(self.in_axes + self.out_axes)
    if axes != list(range(len(self.shape))) or not self.in_axes or not self.out_axes:
      raise ValueError(f"MatrixView: in_axes {self.in_axes} and out_axes {self.out_axes} must partition the axes of "
                       f"a kernel of shape {self.shape}, each non-empty.")

  @classmethod
  def dense(cls, shape: Sequence[int], n_in: int = 1) -> "MatrixView":
    """A kernel whose first ``n_in`` axes are inputs (Dense, DenseGeneral)."""
    shape = tuple(int(s) for s in shape)
    return cls(shape, tuple(range(n_in)), tuple(range(n_in, len(shape))))

  @property
  def in_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in self.in_axes)

  @property
  def out_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in self.out_axes)

  @property
  def k(self) -> int:
    return math.prod(self.in_shape)

  @property
  def n(self) -> int:
    return math.prod(self.out_shape)

  @property
  def perm(self) -> tuple[int, ...]:
    return self.in_axes + self.out_axes

  @property
  def inv_perm(self) -> tuple[int, ...]:
    inv = [0] * len(self.perm)
    for i, p in enumerate(self.perm):
      inv[p] = i
    return tuple(inv)

  @property
  def is_identity(self) -> bool:
    return len(self.shape) == 2 and self.in_axes == (0,)

  def to_matrix(self, w: jax.Array) -> jax.Array:
    if self.is_identity:
      return w
    return jnp.transpose(w, self.perm).reshape(self.k, self.n)

  def from_matrix(self, w2: jax.Array) -> jax.Array:
    if self.is_identity:
      return w2
    canon = tuple(self.shape[a] for a in self.perm)
    return jnp.transpose(w2.reshape(canon), self.inv_perm)

  def vector_to_kernel_rank(self, v: jax.Array) -> jax.Array:
    """A per-input-feature vector (K,) as an array broadcastable against the kernel (1 on output axes)."""
    canon = self.in_shape + (1,) * len(self.out_axes)
    return jnp.transpose(v.reshape(canon), self.inv_perm)

  def vector_from_kernel_rank(self, v: jax.Array) -> jax.Array:
    """Inverse of `vector_to_kernel_rank`: (K,) from a kernel-rank broadcastable array; (K,) passes through."""
    if v.ndim == 1:
      return v
    return jnp.transpose(v, self.perm).reshape(self.k)

  def granularity_for(self, g2):
    """The logical-shape granularity of a (K, N) solver granularity ``g2`` (see the module docstring)."""
    if self.is_identity:
      return g2
    nd = len(self.shape)
    if isinstance(g2, PerTensor):
      return PerBlock(self.shape)
    if isinstance(g2, PerChannel):
      return PerBlock(tuple(self.shape[a] if a in self.in_axes else 1 for a in range(nd)))
    if isinstance(g2, PerGroup):
      if len(self.in_axes) == 1:
        return PerGroup(axis=self.in_axes[0] - nd, size=g2.size)
      tile_in = _group_tile(self.in_shape, g2.size)
      if tile_in is None:
        raise ValueError(f"group size {g2.size} cannot be laid over the input axes {self.in_shape} of a kernel of "
                         f"shape {self.shape} (groups must tile the trailing input axes); use a group size that "
                         f"divides {self.in_shape[-1]} or a multiple of it that divides {self.k}.")
      tile = [1] * nd
      for a, t in zip(self.in_axes, tile_in):
        tile[a] = t
      return PerBlock(tuple(tile))
    raise ValueError(f"MatrixView: solver granularity {g2} has no N-D layout; use PerGroup(axis=0), "
                     "PerChannel(axis=-1) or PerTensor().")

  def qarray_from_matrix(self, qa: QArray) -> QArray:
    """A (K, N) QArray (solver output) as a QArray of the kernel's logical shape."""
    if tuple(qa.shape) != (self.k, self.n):
      raise ValueError(f"qarray_from_matrix: QArray shape {qa.shape} != ({self.k}, {self.n}) of view {self}.")
    if self.is_identity:
      return qa
    gran = self.granularity_for(qa.spec.granularity)
    block = gran.block_shape(self.shape)
    sshape = tuple(n // b for n, b in zip(self.shape, block))
    canon_s = tuple(sshape[a] for a in self.perm)
    fix = lambda a: None if a is None else jnp.transpose(a.reshape(canon_s), self.inv_perm)
    if qa.g_idx is not None and len(self.in_axes) != 1:
      raise ValueError("qarray_from_matrix: act-order g_idx needs a kernel with one input axis; solve kernels with "
                       "several input axes with static_groups=True (no g_idx).")
    return QArray(qvalue=self.from_matrix(qa.qvalue), scale=fix(qa.scale), zero_point=fix(qa.zero_point),
                  g_idx=qa.g_idx, qtype=qa.qtype, spec=qa.spec.replace(granularity=gran), dtype=qa.dtype)


def qarray_to_matrix(qa: QArray, view: MatrixView) -> QArray:
  """A QArray of a kernel's logical shape as a (K, N) QArray with a 2-D granularity (for `jq.qdot`).

  Works from the shapes (value vs scale), so it also reads one slice of a stacked QArray (inside ``nn.scan``).
  """
  if tuple(qa.shape) != view.shape:
    raise ValueError(f"qarray_to_matrix: QArray shape {qa.shape} != the view's kernel shape {view.shape}.")
  g = qa.spec.granularity
  if view.is_identity and (g == PerTensor() or g == PerChannel(axis=-1) or g == PerChannel(axis=1)
                           or (isinstance(g, PerGroup) and g == PerGroup(axis=0, size=g.size))):
    return qa
  sshape = tuple(qa.scale.shape)
  s_in = tuple(sshape[a] for a in view.in_axes)
  s_out = tuple(sshape[a] for a in view.out_axes)
  k, n = view.k, view.n
  if qa.g_idx is not None:
    s_in_tile = None
  else:
    s_in_tile = tuple(a // s for a, s in zip(view.in_shape, s_in))
  if all(s == 1 for s in s_out):
    if qa.g_idx is None and all(s == 1 for s in s_in):
      gran, s2 = PerTensor(), (1, 1)
    else:
      raise ValueError(f"qarray_to_matrix: scales {sshape} shared across outputs but not inputs have no (K, N) "
                       "layout the matmul kernels take.")
  elif s_out != view.out_shape:
    raise ValueError(f"qarray_to_matrix: scales {sshape} group the outputs {view.out_shape}; only per-output scales "
                     "have a (K, N) layout.")
  elif qa.g_idx is None and all(s == 1 for s in s_in):
    gran, s2 = PerChannel(axis=-1), (1, n)
  else:
    g = k // math.prod(s_in)
    if s_in_tile is not None and _group_tile(view.in_shape, g) != s_in_tile:
      raise ValueError(f"qarray_to_matrix: scale tiles {s_in_tile} over inputs {view.in_shape} are not contiguous "
                       "groups of the flattened input.")
    gran, s2 = PerGroup(axis=0, size=g), (math.prod(s_in), n)
  fix = lambda a: None if a is None else jnp.transpose(a, view.perm).reshape(s2)
  return QArray(qvalue=view.to_matrix(qa.qvalue), scale=fix(qa.scale), zero_point=fix(qa.zero_point),
                g_idx=qa.g_idx, qtype=qa.qtype, spec=qa.spec.replace(granularity=gran), dtype=qa.dtype)


def _stacked_granularity(g, shape: Sequence[int]):
  """A granularity that means the same on a stack (L, *shape) and on each slice ``shape``."""
  nd = len(shape)
  if isinstance(g, PerGroup) and not g.batch_axes:
    return PerGroup(axis=(g.axis % nd) - nd, size=g.size)
  if isinstance(g, PerBlock) and len(g.shape) == nd:
    return g
  if isinstance(g, (PerChannel, PerTensor, PerBlock)) and not getattr(g, "batch_axes", ()):
    return PerBlock(tuple(g.block_shape(tuple(shape))))
  raise ValueError(f"stack_qarrays: granularity {g} cannot be stacked; use PerGroup, PerChannel, PerTensor or PerBlock.")


def stack_qarrays(qas: Sequence[QArray]) -> QArray:
  """Stacks same-shaped QArrays (one per layer / expert) along a new leading axis.

  The stacked spec's granularity reads the same on the stack and on each slice (what ``nn.scan`` hands a layer);
  act-order ``g_idx`` become a (L, K) map.
  """
  first = qas[0]
  for q in qas[1:]:
    if q.shape != first.shape or q.qtype != first.qtype or (q.g_idx is None) != (first.g_idx is None) \
        or (q.zero_point is None) != (first.zero_point is None):
      raise ValueError(f"stack_qarrays: QArrays differ ({first!r} vs {q!r}); stack only layers quantized alike.")
  gran = _stacked_granularity(first.spec.granularity, first.shape)
  spec = first.spec.replace(granularity=gran)
  st = lambda name: None if getattr(first, name) is None else jnp.stack([getattr(q, name) for q in qas])
  return QArray(qvalue=st("qvalue"), scale=st("scale"), zero_point=st("zero_point"), g_idx=st("g_idx"),
                qtype=first.qtype, spec=spec, dtype=first.dtype)
