"""Loss-scale state: adjust rules, pytree round trips (jit, checkpoint), tree helpers."""

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant import mixed_precision as mp



def _fields(ls):
  return {f.name: np.asarray(getattr(ls, f.name)) for f in dataclasses.fields(ls)}


def _assert_same_state(a, b):
  assert type(a) is type(b)
  fa, fb = _fields(a), _fields(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_dynamic_defaults_and_dtypes():
  ls = mp.DynamicLossScale()
  f = _fields(ls)
  assert float(f["scale"]) == 2.0**15 and f["scale"].dtype == np.float32
  assert int(f["good_steps"]) == 0 and f["good_steps"].dtype == np.int32
  assert int(f["period"]) == 2000 and f["period"].dtype == np.int32
  assert float(f["factor"]) == 2.0 and float(f["min_scale"]) == 1.0


def test_nonfinite_halves_and_resets_counter():
  ls = mp.DynamicLossScale(scale=1024.0, good_steps=5, period=10)
  new = ls.adjust(jnp.array(False))
  assert float(new.scale) == 512.0 and int(new.good_steps) == 0
  assert int(new.period) == 10 and float(new.min_scale) == 1.0


def test_min_scale_is_respected():
  ls = mp.DynamicLossScale(scale=8.0, min_scale=3.0, factor=2.0)
  for _ in range(5):
    ls = jax.jit(lambda s: s.adjust(jnp.array(False)))(ls)
  assert float(ls.scale) == 3.0
  assert float(ls.min_scale) == 3.0


def test_period_growth_python_reference(rng):
  period, factor = 3, 4.0
  ls = mp.DynamicLossScale(scale=16.0, period=period, factor=factor, min_scale=2.0)
  pattern = rng.random(40) > 0.25
  scale, good, mn = 16.0, 0, 2.0
  step = jax.jit(lambda s, ok: s.adjust(ok))
  for ok in pattern:
    ls = step(ls, jnp.array(ok))
    if ok:
      good += 1
      if good >= period:
        scale, good = scale * factor, 0
    else:
      scale, good = max(scale / factor, mn), 0
    assert float(ls.scale) == scale and int(ls.good_steps) == good


def test_growth_stops_before_float32_overflow():
  ls = mp.DynamicLossScale(scale=2.0**127, period=1)
  new = ls.adjust(jnp.array(True))
  assert np.isfinite(float(new.scale)) and float(new.scale) == 2.0**127


def test_jit_identity_keeps_every_field():
  ls = mp.DynamicLossScale(scale=64.0, good_steps=7, period=11, factor=3.0, min_scale=5.0)
  _assert_same_state(jax.jit(lambda s: s)(ls), ls)
  st = mp.StaticLossScale(128.0)
  _assert_same_state(jax.jit(lambda s: s)(st), st)
  noop = mp.NoOpLossScale()
  assert isinstance(jax.jit(lambda s: s)(noop), mp.NoOpLossScale)


def test_numpy_checkpoint_round_trip_restores_every_field(tmp_path):
  ls = mp.DynamicLossScale(scale=64.0, good_steps=7, period=11, factor=3.0, min_scale=5.0)
  leaves, _ = jax.tree_util.tree_flatten(ls)
  np.savez(tmp_path / "ls.npz", *[np.asarray(x) for x in leaves])
  # Restore into a template built with *default* hyperparameters: every field must come from the file.
  _, treedef = jax.tree_util.tree_flatten(mp.DynamicLossScale())
  data = np.load(tmp_path / "ls.npz")
  restored = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(data[f"arr_{i}"]) for i in range(len(leaves))])
  _assert_same_state(restored, ls)


def test_orbax_checkpoint_round_trip(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  ls = mp.DynamicLossScale(scale=256.0, good_steps=3, period=17, factor=2.0, min_scale=8.0)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", ls)
    ckptr.wait_until_finished()
    restored = ckptr.restore(tmp_path / "ckpt", mp.DynamicLossScale())
  _assert_same_state(restored, ls)


def test_scale_unscale_keep_dtype_and_invert(rng):
  tree = {"a": jnp.asarray(rng.normal(size=(4, 3)), jnp.float16),
          "b": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
          "c": jnp.arange(3, dtype=jnp.int32)}
  for ls in (mp.StaticLossScale(2.0**10), mp.DynamicLossScale(scale=2.0**12)):
    scaled = ls.scale_tree(tree)
    assert {k: v.dtype for k, v in scaled.items()} == {k: v.dtype for k, v in tree.items()}
    np.testing.assert_array_equal(np.asarray(scaled["c"]), np.arange(3))
    back = ls.unscale_tree(scaled)
    for k in ("a", "b"):  # powers of two: exact
      np.testing.assert_array_equal(np.asarray(back[k], np.float64), np.asarray(tree[k], np.float64))
  noop = mp.NoOpLossScale()
  assert noop.scale_tree(tree) is tree and float(noop.loss_scale) == 1.0
  assert noop.adjust(jnp.array(False)) is noop


def test_static_adjust_is_constant():
  st = mp.StaticLossScale(scale=100.0)
  assert float(st.adjust(jnp.array(False)).scale) == 100.0


def test_all_finite(rng):
  good = {"x": jnp.asarray(rng.normal(size=(3, 2)), jnp.float16), "i": jnp.arange(4)}
  assert bool(mp.all_finite(good))
  assert bool(mp.all_finite({}))
  for bad in (jnp.inf, -jnp.inf, jnp.nan):
    x = np.asarray(rng.normal(size=(3, 2)), np.float32)
    x[rng.integers(3), rng.integers(2)] = bad
    assert not bool(jax.jit(mp.all_finite)({"x": jnp.asarray(x), "i": jnp.arange(4)}))


def test_select_tree_picks_and_blocks_nan(rng):
  a = {"x": jnp.asarray(rng.normal(size=(3,)), jnp.float32), "n": jnp.array(3)}
  b = {"x": jnp.full((3,), jnp.nan), "n": jnp.array(5)}
  got = mp.select_tree(jnp.array(True), a, b)
  np.testing.assert_array_equal(np.asarray(got["x"]), np.asarray(a["x"]))
  assert int(mp.select_tree(jnp.array(False), a, b)["n"]) == 5


@pytest.mark.parametrize("kwargs, exc", [
    (dict(scale=0.0), ValueError), (dict(scale=-1.0), ValueError), (dict(scale=float("inf")), ValueError),
    (dict(period=0), ValueError), (dict(period=2.5), ValueError), (dict(good_steps=-1), ValueError),
    (dict(factor=1.0), ValueError), (dict(min_scale=0.0), ValueError), (dict(scale=True), TypeError),
    (dict(scale=np.ones(2)), ValueError),
])
def test_dynamic_bad_input(kwargs, exc):
  with pytest.raises(exc):
    mp.DynamicLossScale(**kwargs)


def test_static_bad_input():
  with pytest.raises(ValueError, match="scale"):
    mp.StaticLossScale(scale=-2.0)


def test_select_tree_bad_input():
  with pytest.raises(ValueError, match="scalar bool"):
    mp.select_tree(jnp.array([True, False]), {"a": jnp.ones(2)}, {"a": jnp.ones(2)})
  with pytest.raises(ValueError, match="scalar bool"):
    mp.select_tree(jnp.array(1.0), {"a": jnp.ones(2)}, {"a": jnp.ones(2)})
  with pytest.raises(ValueError, match="structure"):
    mp.select_tree(jnp.array(True), {"a": jnp.ones(2)}, {"b": jnp.ones(2)})
