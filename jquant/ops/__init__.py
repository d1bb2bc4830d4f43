"""Quantized matmul dispatch: Pallas kernels on GPU, XLA elsewhere."""

from jquant.ops.prepared import PreparedWeight as PreparedWeight
from jquant.ops.prepared import layout_reasons as layout_reasons
from jquant.ops.prepared import prepare as prepare
from jquant.ops.qdot import pallas_reasons as pallas_reasons
from jquant.ops.qdot import qdot as qdot
from jquant.ops.qdot import qeinsum as qeinsum
from jquant.ops.qdot import qmatmul as qmatmul
from jquant.ops.ragged import ragged_qdot as ragged_qdot

__all__ = ("PreparedWeight", "layout_reasons", "pallas_reasons", "prepare", "qdot", "qeinsum", "qmatmul", "ragged_qdot")
