"""quantize_params / dequantize_params: apply a QuantConfig to a whole parameter pytree.

Works on Flax Linen param dicts, NNX ``nnx.State`` (a trailing Variable ``value`` key is dropped from paths) and
any other pytree. Sharding is kept: a leaf with a NamedSharding is quantized by a jit whose output shardings put
the QArray's qvalue on the leaf's sharding and the scales on the compatible sharding (no gather to one device).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jquant.core.paths import path_str
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize, quantize, quantize_checked, raise_if_not_finite
from jquant.core.spec import QuantSpec
from jquant.report import LeafEntry, QuantReport, tree_nbytes
from jquant.rules import QuantConfig, spec_for_leaf

PyTree = Any
_LAST_REPORT: list[QuantReport] = []


def _spec_summary(spec: QuantSpec) -> str:
  sym = "sym" if spec.symmetric else "asym"
  return f"{spec.qtype.name} {spec.granularity} {sym}"


def _is_float(leaf) -> bool:
  return hasattr(leaf, "dtype") and hasattr(leaf, "shape") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _scale_sharding(sharding, value_shape, scale_shape):
  """The leaf's NamedSharding with mesh axes dropped where the scale axis is not split compatibly."""
  if not isinstance(sharding, NamedSharding):
    return None
  spec = list(sharding.spec) + [None] * (len(value_shape) - len(sharding.spec))
  out = []
  for ax, names in enumerate(spec):
    if names is None:
      out.append(None)
      continue
    size = 1
    for n in (names if isinstance(names, tuple) else (names,)):
      size *= sharding.mesh.shape[n]
    out.append(names if scale_shape[ax] % size == 0 and scale_shape[ax] > 1 else None)
  return NamedSharding(sharding.mesh, PartitionSpec(*out))


@functools.lru_cache(maxsize=256)
def _sharded_quantizer(spec: QuantSpec, value_sharding, scale_sharding, has_zp: bool):
  zp_sh = scale_sharding if has_zp else None
  out = QArray(qvalue=value_sharding, scale=scale_sharding, zero_point=zp_sh, g_idx=None, qtype=spec.qtype,
               spec=spec, dtype="float32")
  return jax.jit(lambda x: quantize_checked(x, spec), out_shardings=(out, None))


def _quantize_leaf(x, spec: QuantSpec) -> QArray:
  sharding = getattr(x, "sharding", None)
  if (isinstance(sharding, NamedSharding) and not isinstance(x, jax.core.Tracer) and len(sharding.mesh.devices.flat) > 1
      and not spec.qtype.is_mx):   # MX scales are not one array: quantize on the gathered value
    sshape = spec.granularity.block_shape(x.shape)
    sshape = tuple(n // b for n, b in zip(x.shape, sshape))
    ssh = _scale_sharding(sharding, x.shape, sshape)
    fn = _sharded_quantizer(spec, sharding, ssh, not spec.symmetric)
    qa, ok = fn(x)
    return QArray(qa.qvalue, qa.scale, qa.zero_point, None, qa.qtype, qa.spec, str(x.dtype)), ok
  if isinstance(x, jax.core.Tracer):
    return quantize(x, spec, check_finite_values=False), None
  return quantize_checked(x, spec)


def quantize_params(params: PyTree, cfg: QuantConfig, *, return_report: bool = False, strict: bool = False,
                    skip_unsupported: bool = False):
  """Quantizes the leaves of ``params`` that a rule of ``cfg`` matches.

  Args:
    params: a pytree of arrays (Linen ``params`` dict, NNX state, ...).
    cfg: the `QuantConfig`: ordered first-match regex rules and skip patterns over '/'-joined paths.
    return_report: also return the `QuantReport` (it is always available via `jq.last_report()`).
    strict: a rule or skip pattern that matches nothing raises ValueError (otherwise a UserWarning).
    skip_unsupported: a matched leaf that cannot be quantized with its spec (not floating, a group size that
      does not divide its axis) is left in float and listed as ``unsupported`` in the report, instead of raising.

  Returns:
    The pytree with `QArray` leaves where a rule matched (and the report if ``return_report``).

  Raises:
    TypeError: ``cfg`` is not a QuantConfig.
    ValueError: NaN/inf in a matched weight, a spec that does not fit a matched leaf (unless
      ``skip_unsupported``), or, with ``strict``, a rule that matches nothing.
  """
  if not isinstance(cfg, QuantConfig):
    raise TypeError(f"quantize_params: cfg must be a jq.QuantConfig, got {type(cfg).__name__}.")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  used_rules, used_skips = set(), set()
  out, entries, pending = [], [], []
  for path, leaf in leaves:
    p = path_str(path)
    shape = tuple(getattr(leaf, "shape", ()))
    dtype = str(getattr(leaf, "dtype", type(leaf).__name__))
    nbytes = int(getattr(leaf, "nbytes", 0) or 0)
    base = dict(path=p, shape=shape, dtype=dtype, bytes_before=nbytes, bytes_after=nbytes)
    pat = cfg.skipped_by(p)
    if pat is not None:
      used_skips.add(pat)
      entries.append(LeafEntry(status="skipped", detail=f"skip {pat!r}", **base))
      out.append(leaf)
      continue
    m = cfg.match(p)
    if m is None:
      entries.append(LeafEntry(status="unmatched", detail="no rule matched", **base))
      out.append(leaf)
      continue
    idx, rule = m
    used_rules.add(idx)
    if rule.spec is None:
      entries.append(LeafEntry(status="kept", rule=idx, detail=f"rule {idx} keeps float", **base))
      out.append(leaf)
      continue
    try:
      if not _is_float(leaf):
        raise TypeError(f"leaf {p!r} has dtype {dtype}; only floating arrays can be quantized")
      if len(shape) == 0:
        raise ValueError(f"leaf {p!r} is a scalar; narrow the rule's pattern so it does not match scalars")
      spec, batch = spec_for_leaf(rule, len(shape))
      spec.granularity.block_shape(shape)      # validates divisibility/axes with the path in the message
    except (TypeError, ValueError) as e:
      if skip_unsupported:
        entries.append(LeafEntry(status="unsupported", rule=idx, detail=str(e), **base))
        out.append(leaf)
        continue
      raise type(e)(f"quantize_params: rule {idx} ({rule.pattern!r}) matched {p!r} of shape {shape}: {e}") from e
    qa, ok = _quantize_leaf(leaf, spec)        # dispatched asynchronously; finiteness checked below
    if ok is not None:
      pending.append((ok, leaf, p, spec))
    detail = _spec_summary(spec) + (f" batch_axes={batch}" if batch else "")
    entries.append(LeafEntry(status="quantized", rule=idx, detail=detail, **{**base, "bytes_after": qa.nbytes}))
    out.append(qa)
  for ok, leaf, p, spec in pending:
    raise_if_not_finite(ok, leaf, what=f"parameter {p!r}", spec=spec)
  unused_rules = tuple(r.pattern for i, r in enumerate(cfg.rules) if i not in used_rules)
  unused_skips = tuple(s for s in cfg.skip if s not in used_skips)
  report = QuantReport(tuple(entries), unused_rules, unused_skips)
  _LAST_REPORT[:] = [report]
  if unused_rules or unused_skips:
    msg = (f"quantize_params: rules {list(unused_rules)} and skip patterns {list(unused_skips)} matched no "
           f"parameter. Check them against the paths in the report (e.g. {entries[0].path if entries else '-'!r}); "
           "patterns use re.fullmatch on '/'-joined paths.")
    if strict:
      raise ValueError(msg)
    warnings.warn(msg, UserWarning, stacklevel=2)
  qparams = jax.tree_util.tree_unflatten(treedef, out)
  return (qparams, report) if return_report else qparams


def last_report() -> QuantReport | None:
  """The report of the most recent `quantize_params` call in this process (None before the first)."""
  return _LAST_REPORT[0] if _LAST_REPORT else None


def dequantize_params(params: PyTree, dtype=None) -> PyTree:
  """Replaces every `QArray` leaf by its dequantized array (original dtype unless ``dtype``).

  A linear's explicit ``input_scale`` (AWQ / SmoothQuant scales that could not be folded into a producer, stored
  beside ``kernel``) is folded back into the float kernel and dropped, so the result is a plain float tree that the
  unmodified model runs faithfully: ``(x * s) @ W == x @ (s[:, None] * W)``. On an ``nnx.State`` (from
  ``jq.ptq.quantize_model`` on an NNX model) the result is an ``nnx.State`` of ``nnx.Param`` s shaped as
  ``nnx.state(model, nnx.Param)``: ``nnx.update(model, state)`` / ``nnx.merge(graphdef, state, rest)`` run it.
  ``input_scale`` is (K,) for an (K, N) kernel (or (*batch, K) for stacked ones), or kernel-rank with ones on the
  output axes.
  """
  deq = jax.tree.map(lambda x: dequantize(x, dtype) if isinstance(x, QArray) else x, params,
                     is_leaf=lambda x: isinstance(x, QArray))
  return _fold_input_scales(deq)


def _value(leaf):
  """An array leaf, or the value of an NNX Variable (``nnx.Param``) leaf."""
  return leaf.get_value() if hasattr(leaf, "get_value") and hasattr(leaf, "replace") else leaf


def _fold_input_scales(tree: PyTree) -> PyTree:
  if not isinstance(tree, dict) and not (hasattr(tree, "items") and hasattr(tree, "keys")):
    return tree
  out = {k: _fold_input_scales(v) for k, v in tree.items()}
  if "input_scale" in out and "kernel" in out and hasattr(_value(out["kernel"]), "ndim"):
    kleaf = out["kernel"]
    w, s = _value(kleaf), _value(out.pop("input_scale"))
    s = s if s.ndim == w.ndim else s[..., None]
    w = (w.astype(jnp.float32) * s.astype(jnp.float32)).astype(w.dtype)
    out["kernel"] = kleaf.replace(value=w) if kleaf is not _value(kleaf) else w    # an nnx.Param stays one
  return out if isinstance(tree, dict) else type(tree)(out)


params_nbytes = tree_nbytes   # Bytes of a params tree (QArrays packed); one definition, in jquant.report
