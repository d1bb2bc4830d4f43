"""QuantSpec <-> JSON-able dict, for checkpoints (no pickle)."""

from __future__ import annotations

import dataclasses
from typing import Any

from jquant.core import calibration_methods as cm
from jquant.core import granularity as gr
from jquant.core.qtypes import qtype_by_name
from jquant.core.spec import QuantSpec

_GRANS = {c.__name__: c for c in gr.GRANULARITIES}
_CALIBS = {c.__name__: c for c in cm.CALIBRATION_METHODS}


def _obj_to_dict(obj) -> dict[str, Any]:
  d = {"type": type(obj).__name__}
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    d[f.name] = list(v) if isinstance(v, tuple) else v
  return d


def _obj_from_dict(d: dict[str, Any], table: dict[str, type], what: str):
  d = dict(d)
  name = d.pop("type")
  if name not in table:
    raise ValueError(f"unknown {what} {name!r} in checkpoint metadata; expected one of {sorted(table)}.")
  return table[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def spec_to_dict(spec: QuantSpec) -> dict[str, Any]:
  return {"qtype": spec.qtype.name, "granularity": _obj_to_dict(spec.granularity),
          "symmetric": spec.symmetric, "calibration": _obj_to_dict(spec.calibration),
          "stochastic_rounding": spec.stochastic_rounding, "double_quant": spec.double_quant,
          "double_quant_block": spec.double_quant_block, "scale_dtype": spec.scale_dtype}


def spec_from_dict(d: dict[str, Any]) -> QuantSpec:
  return QuantSpec(qtype=qtype_by_name(d["qtype"]), granularity=_obj_from_dict(d["granularity"], _GRANS, "granularity"),
                   symmetric=d["symmetric"], calibration=_obj_from_dict(d["calibration"], _CALIBS, "calibration"),
                   stochastic_rounding=d["stochastic_rounding"], double_quant=d["double_quant"],
                   double_quant_block=d["double_quant_block"], scale_dtype=d["scale_dtype"])
