"""jquant.core.paths: key paths and module paths as '/'-joined names, flatten/unflatten, get_in/set_in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core import paths
from jquant.core.qtypes import INT8
from jquant.core.quantize import quantize
from jquant.core.spec import QuantSpec


def test_path_str_names_every_key_kind():
  tree = {"a": [1, {"b": 2}], "c": (3,)}
  got = [paths.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert got == ["a/0", "a/1/b", "c/0"]
  assert paths.path_str((jax.tree_util.GetAttrKey("layer"), jax.tree_util.DictKey("value"))) == "layer"
  assert paths.path_str((jax.tree_util.FlattenedIndexKey(3),)) == "3"


def test_join_keeps_a_last_value_name():
  assert paths.join(("blocks", 0, "value")) == "blocks/0/value"
  assert paths.join(()) == ""


def test_flatten_keeps_qarrays_whole_and_unflatten_inverts_it(rng):
  qa = quantize(jnp.asarray(rng.standard_normal((4, 8)), jnp.float32), QuantSpec(qtype=INT8))
  tree = {"dense": {"kernel": qa, "bias": jnp.zeros(8)}, "norm": {"scale": jnp.ones(8)}}
  flat = paths.flatten(tree)
  assert list(flat) == ["dense/bias", "dense/kernel", "norm/scale"]
  assert flat["dense/kernel"] is qa
  back = paths.unflatten(flat)
  assert back["dense"]["kernel"] is qa
  np.testing.assert_array_equal(np.asarray(back["norm"]["scale"]), np.ones(8))


def test_get_in_and_set_in():
  tree = {"a": {"b": {"c": 1}}}
  assert paths.get_in(tree, "a/b/c") == 1
  assert paths.get_in(tree, "a/x/c", None) is None
  assert paths.get_in(tree, "a/b/c/d", "missing") == "missing"   # a leaf is not a dict
  with pytest.raises(KeyError, match="a/x"):
    paths.get_in(tree, "a/x")
  paths.set_in(tree, "a/b/c", 2)
  assert tree["a"]["b"]["c"] == 2
  with pytest.raises(KeyError):
    paths.set_in(tree, "n/m", 3)
  paths.set_in(tree, "n/m", 3, create=True)
  assert tree["n"] == {"m": 3}
