"""Ordered regex rules over '/'-joined parameter paths: the first matching rule decides a leaf's QuantSpec."""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from jquant.core import granularity as gr
from jquant.core.spec import QuantSpec


def _compile(pattern: str, what: str) -> re.Pattern:
  if not isinstance(pattern, str):
    raise TypeError(f"{what}: pattern must be a regex string, got {type(pattern).__name__}.")
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{what}: {pattern!r} is not a valid regex ({e}); fix the pattern, e.g. r'.*/kernel'.") from e


@dataclasses.dataclass(frozen=True)
class QuantRule:
  """Quantize the leaves whose path fully matches ``pattern`` with ``spec``.

  Paths join pytree keys with '/', e.g. ``"layers_0/self_attn/q_proj/kernel"`` (Linen) or
  ``"blocks/0/attn/q/kernel"`` (NNX state; a trailing Variable ``value`` key is dropped).

  Attributes:
    pattern: regex, matched with `re.fullmatch` against the path.
    spec: the QuantSpec to apply, or None to keep matching leaves in float explicitly (listed as kept).
    batch_axes: leading axes that index stacked weights (experts, scanned layers), each slice getting its own
      scales. None (default): for a leaf of rank > 2 the leading ``rank - 2`` axes, with the spec's axes read as
      axes of the trailing (in, out) kernel. ``()`` quantizes the full array as written.
  """

  pattern: str
  spec: QuantSpec | None
  batch_axes: tuple[int, ...] | None = None

  def __post_init__(self):
    if not isinstance(self.pattern, str):
      raise TypeError(f"QuantRule(pattern={self.pattern!r}): the pattern must be a regex string, e.g. r'.*/kernel'.")
    ba = self.batch_axes
    if ba is not None:
      if isinstance(ba, (int, bool)) or not isinstance(ba, (tuple, list)) or not all(
          isinstance(a, int) and not isinstance(a, bool) for a in ba):
        raise TypeError(f"QuantRule({self.pattern!r}, batch_axes={ba!r}): batch_axes must be a tuple of int axes "
                        "such as (0,), () or None.")
      object.__setattr__(self, "batch_axes", tuple(ba))
    object.__setattr__(self, "_regex", _compile(self.pattern, "QuantRule"))
    if self.spec is not None and not isinstance(self.spec, QuantSpec):
      raise TypeError(f"QuantRule({self.pattern!r}): spec must be a jq.QuantSpec or None, got {self.spec!r}.")

  def matches(self, path: str) -> bool:
    return self._regex.fullmatch(path) is not None


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """Ordered rules (first match wins) plus skip patterns (checked first).

  Example:
    >>> cfg = QuantConfig(rules=[QuantRule(r".*/(q|k|v)_proj/kernel", W4_G128), QuantRule(r".*/kernel", W8)],
    ...                   skip=[r".*embed.*", r".*norm.*"])
  """

  rules: Sequence[QuantRule]
  skip: Sequence[str] = ()

  def __post_init__(self):
    if isinstance(self.rules, QuantRule):
      raise TypeError("QuantConfig(rules=QuantRule(...)): rules must be a list of QuantRule; write rules=[rule].")
    if isinstance(self.skip, str):
      raise TypeError(f"QuantConfig(skip={self.skip!r}): skip must be a list of regex strings; a bare string would "
                      f"be read character by character. Write skip=[{self.skip!r}].")
    if not all(isinstance(p, str) for p in self.skip):
      raise TypeError(f"QuantConfig(skip={self.skip!r}): every skip pattern must be a regex string.")
    rules = tuple(self.rules)
    if not rules:
      raise ValueError("QuantConfig(rules=[]) has no rules, so nothing would be quantized; add at least one "
                       "QuantRule, e.g. QuantRule(r'.*/kernel', QuantSpec(qtype=jq.INT8)).")
    for r in rules:
      if not isinstance(r, QuantRule):
        raise TypeError(f"QuantConfig: rules must be QuantRule objects, got {r!r}.")
    object.__setattr__(self, "rules", rules)
    object.__setattr__(self, "skip", tuple(self.skip))
    object.__setattr__(self, "_skip_re", tuple(_compile(p, "QuantConfig.skip") for p in self.skip))

  def skipped_by(self, path: str) -> str | None:
    for pat, rx in zip(self.skip, self._skip_re):
      if rx.fullmatch(path):
        return pat
    return None

  def spec_for(self, path: str, ndim: int) -> QuantSpec | None:
    """The spec a leaf at ``path`` of rank ``ndim`` gets (stacked weights lifted to batch axes), or None when it
    is skipped, unmatched or kept in float by its rule."""
    if self.skipped_by(path) is not None:
      return None
    m = self.match(path)
    if m is None or m[1].spec is None:
      return None
    return spec_for_leaf(m[1], ndim)[0]

  def match(self, path: str) -> tuple[int, QuantRule] | None:
    """(index, rule) of the first rule matching ``path``, or None."""
    for i, r in enumerate(self.rules):
      if r.matches(path):
        return i, r
    return None


def spec_for_leaf(rule: QuantRule, ndim: int) -> tuple[QuantSpec, tuple[int, ...]]:
  """The rule's spec adapted to a leaf of rank ``ndim`` (stacked weights get batch axes); returns (spec, batch)."""
  spec = rule.spec
  if rule.batch_axes is not None:
    bad = [a for a in rule.batch_axes if not -ndim <= a < ndim]
    if bad:
      raise ValueError(f"QuantRule({rule.pattern!r}, batch_axes={rule.batch_axes}): axis {bad[0]} is out of range "
                       f"for a leaf of rank {ndim}; use axes in [{-ndim}, {ndim - 1}].")
    batch = tuple(a % ndim for a in rule.batch_axes)
    return _with_batch(spec, batch, lift=0), batch
  if ndim <= 2:
    return spec, ()
  lead = ndim - 2
  return _with_batch(spec, tuple(range(lead)), lift=lead), tuple(range(lead))


def _with_batch(spec: QuantSpec, batch: tuple[int, ...], lift: int) -> QuantSpec:
  """Adds batch axes; with ``lift`` > 0, axes written for a 2-D (in, out) kernel are moved to the trailing dims."""
  g = spec.granularity
  if not batch:
    return spec
  lifted = lambda a: (a % 2) + lift if lift else a
  if isinstance(g, gr.PerTensor):
    g = gr.PerTensor(batch_axes=batch)
  elif isinstance(g, gr.PerChannel):
    g = gr.PerChannel(axis=lifted(g.axis), batch_axes=batch)
  elif isinstance(g, gr.PerGroup):
    g = gr.PerGroup(axis=lifted(g.axis), size=g.size, batch_axes=batch)
  return spec.replace(granularity=g)    # PerBlock tiles trailing axes; PerToken has no batch notion
