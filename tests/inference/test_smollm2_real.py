"""Real SmolLM2-135M: cached greedy decoding == the non-cached reference for 64 tokens, and Hamlet perplexity
with int8 / fp8 KV caches within 0.3% / 0.5% of the float cache (measured +0.204% / +0.355% at 4 x 256 tokens)."""

import numpy as np
import pytest

from jquant.eval.perplexity import perplexity
from jquant.inference import KVCacheConfig, cached_perplexity, generate
from tests.inference.helpers import reference_greedy

pytestmark = [pytest.mark.assets, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2():
  from jquant.models import load_smollm2

  return load_smollm2()


def test_greedy_64_tokens_match_reference(smollm2):
  model, params = smollm2
  prompt = model.encode("The old lighthouse keeper climbed the stairs and")
  got = generate(model, params, np.asarray([prompt], np.int32), max_new_tokens=64).tokens
  ref = reference_greedy(model, params, np.asarray([prompt], np.int32), 64)   # full forwards, no cache
  np.testing.assert_array_equal(np.asarray(got), ref)


def test_hamlet_perplexity_with_quantized_cache(smollm2):
  model, params = smollm2
  run = lambda d: cached_perplexity(model, params, KVCacheConfig(d), windows=4, seq_len=256, batch_size=2)
  base, i8, f8 = run("float32"), run("int8"), run("fp8_e4m3")
  print(f"Hamlet ppl (4 x 256 tokens): float32 cache {base.ppl:.4f}, int8 {i8.ppl:.4f} "
        f"({100 * (i8.ppl / base.ppl - 1):+.3f}%), fp8_e4m3 {f8.ppl:.4f} ({100 * (f8.ppl / base.ppl - 1):+.3f}%)")
  ref = perplexity(model, params, windows=4, seq_len=256, batch_size=2)   # the non-cached evaluator
  np.testing.assert_allclose(base.ppl, ref.ppl, rtol=1e-4)
  # Deterministic (real weights, fixed windows). Measured at these settings (4 x 256 tokens): float cache 26.6012,
  # int8 +0.204%, fp8_e4m3 +0.355% (at 8 x 512 tokens: +0.142% / +0.453%, RESULTS.md). Bounds ~1.5x the measured
  # increase: a cache with 4x the rounding error (each value written as x + 4 (q(x) - x)) measured +0.865% (int8)
  # / +6.14% (fp8) and fails.
  assert abs(i8.ppl / base.ppl - 1) < 0.003
  assert abs(f8.ppl / base.ppl - 1) < 0.005


def test_hamlet_perplexity_with_4bit_cache(smollm2):
  from jquant.inference import cache_config
  model, params = smollm2
  run = lambda c: cached_perplexity(model, params, c, windows=4, seq_len=256, batch_size=2).ppl
  base, i4, f4 = run(KVCacheConfig("float32")), run(cache_config("int4")), run(cache_config("nvfp4"))
  print(f"Hamlet ppl (4 x 256 tokens): float32 cache {base:.4f}, int4 {100 * (i4 / base - 1):+.3f}%, nvfp4 "
        f"{100 * (f4 / base - 1):+.3f}%")
  # Measured 2026-12-05 at these settings: float 26.6012, int4 (g16 asym + Hadamard) +0.206%, nvfp4 +7.58% (at
  # 8 x 512: +3.01% / +10.45%, RESULTS.md). Bounds ~1.5-2x the measured increase.
  assert 0 < i4 / base - 1 < 0.004
  assert 0 < f4 / base - 1 < 0.11
