"""Hugging Face interop: read and write GPTQ, AWQ GEMM and compressed-tensors checkpoints (NumPy only, no torch).

* ``load_hf(path)`` -> ``HFModel`` (kind, settings, params with QArray kernels, tokenizer.json path).
* ``export_hf(params, kind, settings, out_dir, fmt)`` writes an HF folder that transformers / vLLM load.
* ``codecs``: the byte layouts (`IntRecord`, GPTQ/AWQ/compressed-tensors encode/decode, int32 packing).

This package depends on ``jquant.core``, NumPy, ml_dtypes and jax only (no flax, no ``jquant.models``): the model
side (``jquant.models.from_pretrained`` / ``export_pretrained``) builds on it. Byte layouts are described in
``shared/research/interop.md`` and in the docstring of ``codecs``.
"""

from jquant.interop.codecs import IntRecord
from jquant.interop.export import FORMATS, export_hf
from jquant.interop.import_ import HFModel, load_hf

__all__ = ["FORMATS", "HFModel", "IntRecord", "export_hf", "load_hf"]
