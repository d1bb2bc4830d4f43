"""QuantReport: what `quantize_params` did to every leaf. Nothing is skipped silently."""

from __future__ import annotations

import dataclasses
from typing import Any

from jquant.report.table import text_table


@dataclasses.dataclass(frozen=True)
class LeafEntry:
  path: str
  shape: tuple[int, ...]
  dtype: str
  status: str               # "quantized" | "skipped" | "kept" | "unmatched" | "unsupported"
  rule: int | None = None   # index of the matching rule
  detail: str = ""          # spec summary, the skip pattern, or the reason
  bytes_before: int = 0
  bytes_after: int = 0


@dataclasses.dataclass(frozen=True)
class QuantReport:
  """Per-leaf outcome of `quantize_params`, plus the rules that matched nothing."""

  entries: tuple[LeafEntry, ...]
  unused_rules: tuple[str, ...]
  unused_skips: tuple[str, ...]

  def _with(self, status: str) -> list[LeafEntry]:
    return [e for e in self.entries if e.status == status]

  # the entries of each status ("quantized", "skipped", "kept", "unmatched", "unsupported"), and the byte totals
  quantized = property(lambda self: self._with("quantized"))
  skipped = property(lambda self: self._with("skipped"))
  kept = property(lambda self: self._with("kept"))
  unmatched = property(lambda self: self._with("unmatched"))
  unsupported = property(lambda self: self._with("unsupported"))
  bytes_before = property(lambda self: sum(e.bytes_before for e in self.entries))
  bytes_after = property(lambda self: sum(e.bytes_after for e in self.entries))

  def as_dict(self) -> dict[str, Any]:
    return {"entries": [dataclasses.asdict(e) for e in self.entries], "unused_rules": list(self.unused_rules),
            "unused_skips": list(self.unused_skips), "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after}

  def __str__(self) -> str:
    lines = text_table(("path", "shape", "status", "detail"),
                       [(e.path, str(e.shape), e.status, e.detail) for e in self.entries])
    counts = {s: len(self._with(s)) for s in ("quantized", "skipped", "kept", "unmatched", "unsupported")}
    lines.append(", ".join(f"{k}: {v}" for k, v in counts.items()))
    ratio = self.bytes_before / max(self.bytes_after, 1)
    lines.append(f"size: {self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB ({ratio:.2f}x)")
    if self.unused_rules:
      lines.append(f"rules that matched nothing: {list(self.unused_rules)}")
    if self.unused_skips:
      lines.append(f"skip patterns that matched nothing: {list(self.unused_skips)}")
    return "\n".join(lines)
