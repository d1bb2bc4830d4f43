"""convert: fake-quant-trained params -> integer `QArray` params with the same inference numerics.

A weight trained with ``fake_quant(w, spec)`` (dynamic scale) becomes ``jq.quantize(w, spec)``; one trained with
``lsq_fake_quant(w, s, z, spec)`` (learned step size, stored beside it as ``<name>_scale`` and, when asymmetric,
``<name>_zero_point``) becomes ``jq.quantize(w, spec, scale=|s|, zero_point=round(z))`` (`lsq_quantize`) and the
two learned leaves are dropped. In both cases ``jq.dequantize`` of the result equals the fake-quant forward bit
for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jquant.core.paths import flatten, path_str
from jquant.core.qarray import QArray
from jquant.core.quantize import quantize
from jquant.core.spec import QuantSpec
from jquant.qat.lsq import lsq_quantize

__all__ = ("SCALE_SUFFIX", "ZERO_POINT_SUFFIX", "convert", "path_str")

SCALE_SUFFIX = "_scale"
ZERO_POINT_SUFFIX = "_zero_point"


def _resolver(specs) -> Callable[[str, Any], QuantSpec | None]:
  """Turns the accepted spec sources into ``f(path, leaf) -> QuantSpec | None``."""
  if isinstance(specs, QuantSpec):
    raise TypeError("convert: got a single QuantSpec; say which leaves it applies to with a mapping "
                    "{path: spec}, a callable (path, leaf) -> spec | None, or a jq.QuantConfig.")
  if callable(getattr(specs, "spec_for", None)):                     # jq.QuantConfig with spec_for(path, ndim)
    return lambda path, leaf: specs.spec_for(path, jnp.ndim(leaf))
  if isinstance(specs, Mapping):
    for k, v in specs.items():
      if not isinstance(k, str) or not (v is None or isinstance(v, QuantSpec)):
        raise TypeError(f"convert: a spec mapping must map '/'-joined path strings to QuantSpec or None; "
                        f"got {k!r}: {v!r}.")
    return lambda path, leaf: specs.get(path)
  if callable(specs):
    return specs
  raise TypeError(f"convert: specs must be a jq.QuantConfig, a mapping {{path: QuantSpec}} or a callable "
                  f"(path, leaf) -> QuantSpec | None; got {type(specs).__name__}.")


def convert(params: Any, specs: Any, *, strict: bool = True) -> Any:
  """Replaces every fake-quantized weight in ``params`` by its integer `QArray`.

  Args:
    params: a pytree of arrays (e.g. a Linen ``variables`` dict or its ``"params"``), possibly holding LSQ
      siblings ``<name>_scale`` / ``<name>_zero_point`` next to a weight ``<name>``.
    specs: which leaves to quantize and how: a ``jq.QuantConfig`` (rules over the '/'-joined paths), a mapping
      ``{path: QuantSpec}``, or a callable ``(path, leaf) -> QuantSpec | None``.
    strict: raise if an LSQ ``*_scale`` leaf is left without a matching quantized weight.

  Returns:
    A pytree of the same nesting where matched weights are `jq.QArray` (and their LSQ siblings removed).
    ``jq.dequantize`` of each equals the fake-quant forward of that weight.

  Raises:
    TypeError: bad ``specs``; a matched leaf that is not a floating array.
    ValueError: an LSQ scale of the wrong shape, or (strict) an orphan ``*_scale`` leaf.
  """
  resolve = _resolver(specs)
  flat = flatten(params)
  consumed: set[str] = set()
  new: dict[str, Any] = {}
  for path, leaf in flat.items():
    if isinstance(leaf, QArray) or path in consumed:
      continue
    spec = resolve(path, leaf)
    if spec is None:
      continue
    if not isinstance(spec, QuantSpec):
      raise TypeError(f"convert: the spec for {path} is {spec!r}, expected a jq.QuantSpec or None.")
    scale = flat.get(path + SCALE_SUFFIX)
    zero_point = flat.get(path + ZERO_POINT_SUFFIX)
    if scale is None:
      new[path] = quantize(leaf, spec)
      continue
    consumed.add(path + SCALE_SUFFIX)
    if zero_point is not None:
      consumed.add(path + ZERO_POINT_SUFFIX)
    new[path] = lsq_quantize(leaf, scale, zero_point, spec)
  if strict:
    orphans = [p for p in flat if p.endswith(SCALE_SUFFIX) and p not in consumed and p[: -len(SCALE_SUFFIX)] in flat]
    if orphans:
      raise ValueError(f"convert: learned scales {orphans} have no quantized weight beside them; add a rule for "
                       "their weights (or pass strict=False to keep them as float leaves).")

  out = jax.tree_util.tree_map_with_path(lambda p, x: new.get(path_str(p), x), params,
                                         is_leaf=lambda x: isinstance(x, QArray))
  return _drop(out, consumed)


def _drop(tree: Any, paths: set[str], prefix: str = "") -> Any:
  """Removes mapping entries whose '/'-joined path is in ``paths`` (LSQ siblings live in dicts)."""
  if not paths or not isinstance(tree, Mapping):
    return tree
  kept = {k: _drop(v, paths, f"{prefix}{k}/") for k, v in tree.items() if f"{prefix}{k}" not in paths}
  try:
    return type(tree)(kept)
  except TypeError:
    return kept
