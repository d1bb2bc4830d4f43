"""Torch-side helper for the interop tests: run by the Python 3.11 venv (.venv-interop) with torch (CPU),
transformers and compressed-tensors. Never imported by jquant or by pytest itself.

    python hf_side.py logits HF_DIR IDS.npy OUT.npy          # AutoModelForCausalLM / AutoModel outputs
    python hf_side.py weights HF_DIR OUT.npz                 # float weights of every Linear after loading
    python hf_side.py tokenize HF_DIR TEXT_FILE OUT.npy       # AutoTokenizer ids (no special tokens)
    python hf_side.py nll HF_DIR IDS.npy OUT.npy              # summed next-token NLL per window (float64)
    python hf_side.py tiny_llama OUT_DIR SEED [qwen]          # a random tiny Llama saved by transformers
    python hf_side.py tiny_bert OUT_DIR SEED                  # a random tiny BertModel saved by transformers
    python hf_side.py ct_compress SRC_DIR OUT_DIR SCHEME[:G]  # compressed-tensors quantizes + saves SRC
"""

import json
import os
import sys

import numpy as np
import torch

torch.manual_seed(0)
torch.set_num_threads(2)


def _load(d):
  import transformers
  cfg = json.load(open(f"{d}/config.json"))
  cls = transformers.AutoModel if cfg["architectures"][0] == "BertModel" else transformers.AutoModelForCausalLM
  kw = {}
  if os.environ.get("HF_SIDE_DECOMPRESS") and "quantization_config" in cfg:   # decompress to float on load
    kw["quantization_config"] = transformers.CompressedTensorsConfig(run_compressed=False)
  m = cls.from_pretrained(d, dtype=torch.float32, **kw)
  m.eval()
  return m, cfg


def logits(d, ids_path, out):
  m, cfg = _load(d)
  ids = torch.from_numpy(np.load(ids_path).astype(np.int64))
  with torch.no_grad():
    if cfg["architectures"][0] == "BertModel":
      y = m(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    else:
      y = m(input_ids=ids).logits
  np.save(out, y.float().numpy())


def nll(d, ids_path, out):
  m, _ = _load(d)
  ids = torch.from_numpy(np.load(ids_path).astype(np.int64))
  tot = []
  with torch.no_grad():
    for row in ids:
      lg = m(input_ids=row[None]).logits[0].double()
      lp = torch.log_softmax(lg[:-1], -1)
      tot.append(float(-lp.gather(1, row[1:, None]).sum()))
  np.save(out, np.array(tot, np.float64))


def weights(d, out):
  """float32 weight of every nn.Linear after transformers loaded (and decompressed) the folder."""
  import torch.nn as nn
  import transformers
  m = transformers.AutoModelForCausalLM.from_pretrained(
      d, dtype=torch.float32, quantization_config=transformers.CompressedTensorsConfig(run_compressed=False))
  np.savez(out, **{n: mod.weight.detach().float().numpy() for n, mod in m.named_modules() if isinstance(mod, nn.Linear)})


def tokenize(d, text_path, out):
  from transformers import AutoTokenizer
  tk = AutoTokenizer.from_pretrained(d)
  np.save(out, np.array(tk(open(text_path, encoding="utf-8").read(), add_special_tokens=False).input_ids, np.int64))


def tiny_llama(out, seed, qwen=False):
  import transformers
  torch.manual_seed(int(seed))
  kw = dict(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=50000.0, tie_word_embeddings=False)
  if qwen:
    m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
  else:
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
  with torch.no_grad():
    for p in m.parameters():
      p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    if qwen:
      for n, p in m.named_parameters():
        if n.endswith(".bias"):
          p.normal_(0, 0.3)
  m.save_pretrained(out, safe_serialization=True)


def tiny_bert(out, seed):
  import transformers
  torch.manual_seed(int(seed))
  m = transformers.BertModel(transformers.BertConfig(vocab_size=80, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     max_position_embeddings=40))
  m.save_pretrained(out, safe_serialization=True)


def ct_compress(src, out, scheme):
  """compressed-tensors itself quantizes every Linear but lm_head (preset ``scheme``, min/max ranges) and saves the
  model compressed (pack-quantized), as llm-compressor does."""
  import torch.nn as nn
  from compressed_tensors.compressors import ModelCompressor
  from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
  from compressed_tensors.quantization.utils import calculate_qparams
  m, _ = _load(src)
  scheme, _, group = scheme.partition(":")           # "W4A16_ASYM:64" overrides the preset's group size
  qscheme = preset_name_to_scheme(scheme, ["Linear"])
  if group:
    qscheme.weights.group_size = int(group)
  qcfg = QuantizationConfig(config_groups={"group_0": qscheme}, ignore=["lm_head"])
  apply_quantization_config(m, qcfg)
  with torch.no_grad():
    for _, mod in m.named_modules():
      if not (isinstance(mod, nn.Linear) and getattr(mod, "quantization_scheme", None) is not None):
        continue
      args = mod.quantization_scheme.weights
      w = mod.weight.data
      if args.group_size and args.group_size > 0:
        wv = w.reshape(w.shape[0], -1, args.group_size)
        mn, mx = wv.amin(-1), wv.amax(-1)
      elif str(getattr(args.strategy, "value", args.strategy)) == "tensor":
        mn, mx = w.amin().reshape(1), w.amax().reshape(1)
      else:
        mn, mx = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
      scale, zp = calculate_qparams(mn, mx, args)
      mod.weight_scale.data.copy_(scale.reshape(mod.weight_scale.shape).to(mod.weight_scale.dtype))
      if hasattr(mod, "weight_zero_point"):
        mod.weight_zero_point.data.copy_(zp.reshape(mod.weight_zero_point.shape).to(mod.weight_zero_point.dtype))
  fmt = "float-quantized" if scheme.startswith("FP8") else "int-quantized" if scheme == "W8A8" else "pack-quantized"
  compressor = ModelCompressor.from_pretrained_model(m, quantization_format=fmt)
  compressor.compress_model(m)
  m.save_pretrained(out, safe_serialization=True)
  compressor.update_config(out)
  import os
  import shutil
  for f in ("tokenizer.json", "tokenizer_config.json"):
    if os.path.exists(os.path.join(src, f)):
      shutil.copy(os.path.join(src, f), out)


if __name__ == "__main__":
  cmd, *rest = sys.argv[1:]
  {"logits": logits, "nll": nll, "weights": weights, "tokenize": tokenize, "tiny_llama": tiny_llama, "tiny_bert": tiny_bert,
   "ct_compress": ct_compress}[cmd](*rest)
