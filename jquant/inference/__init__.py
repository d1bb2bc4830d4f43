"""Quantized, jit-compiled inference for any model built on ``jquant.models.llama.LlamaLM``: a float / int8 / fp8 /
int4 / NVFP4 KV cache, prefill + a ``lax.while_loop`` decode (greedy, top-k / top-p sampling, EOS done mask), float
or quantized weights. There is no second model here: ``cached_forward`` runs the model's own Linen blocks with a
`CacheView` (what attention writes to and reads from the `KVCache`); ``generation`` / ``cached_eval`` drive it.

    from jquant import inference as jqi
    res = jqi.generate(model, qparams, prompt_ids, max_new_tokens=64, cache_config=jqi.KVCacheConfig("int8"))
"""

from jquant.inference.cached_eval import cached_logits, cached_perplexity, params_nbytes
from jquant.inference.cached_forward import CacheView, forward_cached
from jquant.inference.generation import GenerationResult, decode, generate, new_cache, prefill
from jquant.inference.kv_cache import CACHE_DTYPES, KVCache, KVCacheConfig, cache_config, cache_nbytes, init_cache
from jquant.inference.sampling import SamplingConfig, filter_logits, sample_logits

__all__ = ["CACHE_DTYPES", "CacheView", "GenerationResult", "KVCache", "KVCacheConfig", "SamplingConfig",
           "cache_config", "cache_nbytes", "cached_logits", "cached_perplexity", "decode", "filter_logits",
           "forward_cached", "generate", "init_cache", "new_cache", "params_nbytes", "prefill", "sample_logits"]
