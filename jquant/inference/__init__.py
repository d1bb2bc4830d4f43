"""Quantized, jit-compiled inference for the Llama LM: a float / int8 / fp8 / int4 / NVFP4 KV cache, prefill + a
``lax.while_loop`` decode (greedy, top-k / top-p sampling, EOS done mask), with float or quantized weights.

    from jquant import inference as jqi
    res = jqi.generate(model, qparams, prompt_ids, max_new_tokens=64, cache_config=jqi.KVCacheConfig("int8"))
"""

from jquant.inference.cached_eval import cached_logits, cached_perplexity, params_nbytes
from jquant.inference.generation import GenerationResult, decode, generate, new_cache, prefill
from jquant.inference.kv_cache import CACHE_DTYPES, KVCache, KVCacheConfig, cache_config, cache_nbytes, init_cache
from jquant.inference.sampling import SamplingConfig, filter_logits, sample_logits

__all__ = ["CACHE_DTYPES", "GenerationResult", "KVCache", "KVCacheConfig", "SamplingConfig", "cache_config", "cache_nbytes",
           "cached_logits", "cached_perplexity", "decode", "filter_logits", "generate", "init_cache", "new_cache",
           "params_nbytes", "prefill", "sample_logits"]
