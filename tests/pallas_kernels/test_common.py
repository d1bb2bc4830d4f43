"""pallas_kernels._common: padding/arithmetic helpers, device queries, autotune off-GPU, TileConfig validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh
from pk_testutil import A100, H100

from pallas_kernels import _common


def test_arithmetic_helpers():
  assert [_common.cdiv(a, 4) for a in (1, 4, 5, 8)] == [1, 1, 2, 2]
  assert [_common.round_up(a, 16) for a in (1, 16, 17)] == [16, 16, 32]
  assert _common.largest_divisor(96, (128, 64, 32)) == 32
  assert _common.largest_divisor(48, (128, 64, 32)) is None
  assert [_common.is_power_of_2(v) for v in (0, 1, 6, 64)] == [False, True, False, True]


def test_pad_axis_matches_numpy(rng):
  x = rng.standard_normal((3, 5)).astype(np.float32)
  got = _common.pad_axis(jnp.asarray(x), 1, 8, 2.5)
  np.testing.assert_array_equal(np.asarray(got), np.pad(x, ((0, 0), (0, 3)), constant_values=2.5))
  assert _common.pad_axis(jnp.asarray(x), 0, 3).shape == (3, 5)
  with pytest.raises(ValueError, match="longer than the target"):
    _common.pad_axis(jnp.asarray(x), 1, 4)


def test_hbm_bandwidth_lookup():
  assert _common.hbm_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
  assert _common.hbm_bandwidth("NVIDIA A100-SXM4-80GB") == 2.0e12
  assert _common.hbm_bandwidth("cpu") is None


@pytest.mark.parametrize("kind,cc", [(H100, 90), (A100, 80)])
def test_target_compute_capability_from_abstract_device(kind, cc):
  with jax.sharding.use_abstract_mesh(
      AbstractMesh((1,), ("x",), abstract_device=AbstractDevice(device_kind=kind, num_cores=132, platform="gpu"))):
    assert _common.target_compute_capability() == cc


def test_autotune_returns_default_without_gpu():
  if jax.default_backend() == "gpu":
    pytest.skip("checks the CPU behaviour")
  calls = []
  got = _common.autotune("k", lambda c: calls.append(c), ["a", "b"], (), supports=lambda c: None, default="d")
  assert got == "d" and calls == []
  assert _common.target_compute_capability() is None


def test_tile_config_validation_and_smem_budget():
  with pytest.raises(ValueError, match="block_n"):
    _common.TileConfig(block_m=16, block_n=48, block_k=64)
  with pytest.raises(ValueError, match="num_stages"):
    _common.TileConfig(block_m=16, block_n=64, block_k=64, num_stages=0)
  big = _common.TileConfig(block_m=256, block_n=256, block_k=256, num_stages=4)
  assert "shared memory" in _common.tile_smem_reason(big, 1, 1)
  assert _common.tile_smem_reason(_common.default_tile_config(4096, 4096, x_itemsize=4), 4, 1) is None
