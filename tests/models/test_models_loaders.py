"""Loaders on small synthetic files: torch-layout safetensors -> Linen params; GGUF (F32) -> Linen params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.models import MiniLM, SmolLM2
from jquant.models.minilm import minilm_params_from_safetensors
from jquant.models.smollm2 import smollm2_params_from_gguf, smollm2_tokenizer_from_gguf
from tests.models.helpers import TINY_BERT, TINY_LLAMA


def _bert_torch_state(rng):
  c = TINY_BERT
  d, f = c.hidden, c.intermediate
  sd = {"embeddings.position_ids": np.arange(c.max_positions)[None].astype(np.int64),
        "embeddings.word_embeddings.weight": rng.standard_normal((c.vocab_size, d)),
        "embeddings.position_embeddings.weight": rng.standard_normal((c.max_positions, d)),
        "embeddings.token_type_embeddings.weight": rng.standard_normal((c.type_vocab_size, d)),
        "embeddings.LayerNorm.weight": rng.standard_normal(d), "embeddings.LayerNorm.bias": rng.standard_normal(d),
        "pooler.dense.weight": rng.standard_normal((d, d)), "pooler.dense.bias": rng.standard_normal(d)}
  for i in range(c.num_layers):
    pre = f"encoder.layer.{i}."
    for name, (o, n) in {"attention.self.query": (d, d), "attention.self.key": (d, d), "attention.self.value": (d, d),
                         "attention.output.dense": (d, d), "intermediate.dense": (f, d), "output.dense": (d, f)}.items():
      sd[pre + name + ".weight"] = rng.standard_normal((o, n))
      sd[pre + name + ".bias"] = rng.standard_normal(o)
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
      sd[pre + ln + ".weight"] = rng.standard_normal(d)
      sd[pre + ln + ".bias"] = rng.standard_normal(d)
  return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in sd.items()}


def test_safetensors_loader_transposes_and_matches_structure(tmp_path, rng):
  from safetensors.numpy import save_file
  sd = _bert_torch_state(rng)
  save_file(sd, str(tmp_path / "model.safetensors"))
  params = minilm_params_from_safetensors(tmp_path / "model.safetensors")
  model = MiniLM(TINY_BERT)
  want = jax.eval_shape(model.init, jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, want)
  np.testing.assert_array_equal(params["layer_1"]["intermediate"]["kernel"], sd["encoder.layer.1.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(params["layer_0"]["attention_layernorm"]["scale"],
                                sd["encoder.layer.0.attention.output.LayerNorm.weight"])


def test_safetensors_loader_bad_input(tmp_path, rng):
  from safetensors.numpy import save_file
  with pytest.raises(ValueError, match="does not exist"):
    minilm_params_from_safetensors(tmp_path / "missing.safetensors")
  save_file({"decoder.weird.weight": rng.standard_normal((2, 2)).astype(np.float32)}, str(tmp_path / "x.safetensors"))
  with pytest.raises(ValueError, match="unexpected tensor"):
    minilm_params_from_safetensors(tmp_path / "x.safetensors")


def _write_gguf(path, rng, extra_tensor=False):
  import gguf
  c = TINY_LLAMA
  w = gguf.GGUFWriter(str(path), arch="llama")
  w.add_block_count(c.num_layers)
  w.add_context_length(64)
  w.add_embedding_length(c.hidden)
  w.add_feed_forward_length(c.intermediate)
  w.add_head_count(c.num_heads)
  w.add_head_count_kv(c.num_kv_heads)
  w.add_rope_freq_base(c.rope_base)
  w.add_layer_norm_rms_eps(c.rms_eps)
  tokens = [chr(ord("a") + i) for i in range(26)] + ["ab", "abc"] + [f"<t{i}>" for i in range(c.vocab_size - 28)]
  w.add_tokenizer_model("gpt2")
  w.add_token_list(tokens)
  w.add_token_merges(["a b", "ab c"])
  w.add_token_types([1] * c.vocab_size)
  hd = c.hidden // c.num_heads
  torch_w = {"token_embd.weight": (c.vocab_size, c.hidden), "output_norm.weight": (c.hidden,)}
  for i in range(c.num_layers):
    torch_w.update({f"blk.{i}.attn_norm.weight": (c.hidden,), f"blk.{i}.ffn_norm.weight": (c.hidden,),
                    f"blk.{i}.attn_q.weight": (c.hidden, c.hidden), f"blk.{i}.attn_k.weight": (c.num_kv_heads * hd, c.hidden),
                    f"blk.{i}.attn_v.weight": (c.num_kv_heads * hd, c.hidden),
                    f"blk.{i}.attn_output.weight": (c.hidden, c.hidden),
                    f"blk.{i}.ffn_gate.weight": (c.intermediate, c.hidden),
                    f"blk.{i}.ffn_up.weight": (c.intermediate, c.hidden),
                    f"blk.{i}.ffn_down.weight": (c.hidden, c.intermediate)})
  if extra_tensor:
    torch_w["output.weight"] = (c.vocab_size, c.hidden)
  arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in torch_w.items()}
  for k, a in arrays.items():
    w.add_tensor(k, a)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return arrays


def test_gguf_loader_and_tokenizer(tmp_path, rng):
  arrays = _write_gguf(tmp_path / "tiny.gguf", rng)
  config, params = smollm2_params_from_gguf(tmp_path / "tiny.gguf")
  assert config == TINY_LLAMA
  want = jax.eval_shape(SmolLM2(config).init, jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, want)
  np.testing.assert_array_equal(params["layers_1"]["mlp"]["down_proj"]["kernel"], arrays["blk.1.ffn_down.weight"].T)
  np.testing.assert_array_equal(params["embed_tokens"]["embedding"], arrays["token_embd.weight"])
  tk = smollm2_tokenizer_from_gguf(tmp_path / "tiny.gguf")
  assert tk.encode("abcab", add_special_tokens=False).ids == [27, 26]
  logits = SmolLM2(config).apply(params, jnp.asarray([[27, 26, 3]], jnp.int32))
  assert logits.shape == (1, 3, config.vocab_size) and bool(jnp.all(jnp.isfinite(logits)))


def test_gguf_loader_bad_input(tmp_path, rng):
  with pytest.raises(ValueError, match="does not exist"):
    smollm2_params_from_gguf(tmp_path / "nope.gguf")
  _write_gguf(tmp_path / "untied.gguf", rng, extra_tensor=True)
  with pytest.raises(ValueError, match="unexpected GGUF tensor 'output.weight'"):
    smollm2_params_from_gguf(tmp_path / "untied.gguf")


def test_load_minilm_folder_without_model_files(tmp_path):
  from jquant.models import load_minilm
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match=r"lacks \['model.safetensors', 'tokenizer.json'\]"):
    load_minilm(tmp_path)
