"""Reports, one module for every level: what `quantize_params` did to each leaf (`QuantReport`), what
`jquant.ptq.quantize_model` did to each linear (`PTQReport`, `LayerReport`), and the per-layer table of a checkpoint
(`layer_rows`, `format_table`, `plot`, `suggest_8bit`, written by ``python -m jquant quantize`` / ``report``).

All of them use one SQNR (`sqnr_db`: float64 on the host), one byte count (`tree_nbytes`: QArrays packed) and one
table writer (`text_table`). Layering: below `jquant.params` and `jquant.ptq`, above `jquant.ops` / `jquant.core`.
"""

from jquant.report.layers import LayerReport, PTQReport
from jquant.report.leaf import LeafEntry, QuantReport
from jquant.report.metrics import energies, layer_output, layer_sqnr, sqnr_db, sqnr_from_energies, tree_nbytes
from jquant.report.table import format_table, layer_rows, plot, quality, suggest_8bit, text_table

__all__ = ["LayerReport", "LeafEntry", "PTQReport", "QuantReport", "energies", "format_table", "layer_output",
           "layer_rows", "layer_sqnr", "plot", "quality", "sqnr_db", "sqnr_from_energies", "suggest_8bit",
           "text_table", "tree_nbytes"]
