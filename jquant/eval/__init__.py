"""Evaluation harness on the real models (EVAL.md): SmolLM2 perplexity and MiniLM embedding fidelity on Hamlet,
plus calibration data drawn from the other plays."""

from jquant.eval.calibration import encoder_calibration_texts as encoder_calibration_texts
from jquant.eval.calibration import lm_calibration_windows as lm_calibration_windows
from jquant.eval.embedding import EmbeddingFidelity as EmbeddingFidelity
from jquant.eval.embedding import embed_texts as embed_texts
from jquant.eval.embedding import embedding_fidelity as embedding_fidelity
from jquant.eval.embedding import fidelity_metrics as fidelity_metrics
from jquant.eval.perplexity import PerplexityResult as PerplexityResult
from jquant.eval.perplexity import perplexity as perplexity
from jquant.eval.text import paragraphs as paragraphs
from jquant.eval.text import read_text as read_text
from jquant.eval.text import token_windows as token_windows

__all__ = ["EmbeddingFidelity", "PerplexityResult", "embed_texts", "embedding_fidelity", "encoder_calibration_texts",
           "fidelity_metrics", "lm_calibration_windows", "paragraphs", "perplexity", "read_text", "token_windows"]
