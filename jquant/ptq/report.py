"""The PTQ report lives in `jquant.report` (one module for every report); these names stay importable from here.
``output_sqnr_db`` is `jquant.report.sqnr_db`."""

from jquant.report import LayerReport, PTQReport, layer_sqnr, tree_nbytes
from jquant.report import sqnr_db as output_sqnr_db

__all__ = ["LayerReport", "PTQReport", "layer_sqnr", "output_sqnr_db", "tree_nbytes"]
