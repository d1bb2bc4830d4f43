"""A PyTorch-CPU GPTQ written the way the reference ``fasterquant`` does it (blocks of 128, per-column Python loop,
Cholesky of H^-1 once, group params at each group start from the current weights), used as the baseline that
benchmarks/solvers.py times in the same run. Run with the interop venv (torch CPU, Python 3.11):

  .venv-interop/bin/python benchmarks/gptq_torch_ref.py K [--reps 2]

Prints one JSON line: first-call and steady seconds for a symmetric 4-bit g128 solve of a random (K, K) layer.
"""

import argparse
import json
import time

import torch


def gptq_ref(w, h, group=128, block=128, damp=0.01, qmax=7.0):
  """w (N, K) rows are output channels (the reference's layout); returns the quantized weight."""
  w = w.clone()
  k = w.shape[1]
  h = h.clone()
  h += torch.eye(k) * damp * torch.mean(torch.diag(h))
  hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
  q_all = torch.zeros_like(w)
  scale = None
  for i1 in range(0, k, block):
    i2 = min(i1 + block, k)
    w1 = w[:, i1:i2].clone()
    q1 = torch.zeros_like(w1)
    err1 = torch.zeros_like(w1)
    hinv1 = hinv[i1:i2, i1:i2]
    for i in range(i2 - i1):
      col = w1[:, i]
      d = hinv1[i, i]
      if (i1 + i) % group == 0:
        amax = w[:, i1 + i:i1 + i + group].abs().amax(dim=1)
        scale = torch.where(amax == 0, torch.ones_like(amax), amax / qmax)
      q = torch.clamp(torch.round(col / scale), -qmax - 1, qmax) * scale
      q1[:, i] = q
      e = (col - q) / d
      w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
      err1[:, i] = e
    q_all[:, i1:i2] = q1
    w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
  return q_all


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("k", type=int)
  ap.add_argument("--reps", type=int, default=2)
  a = ap.parse_args()
  g = torch.Generator().manual_seed(0)
  x = torch.randn(2 * a.k, a.k, generator=g)
  h = 2.0 / x.shape[0] * (x.T @ x)
  w = torch.randn(a.k, a.k, generator=g) / a.k ** 0.5
  times = []
  for _ in range(a.reps + 1):
    t0 = time.perf_counter()
    gptq_ref(w, h)
    times.append(time.perf_counter() - t0)
  print(json.dumps({"impl": "torch-ref", "k": a.k, "threads": torch.get_num_threads(), "first_s": times[0],
                    "steady_s": min(times[1:])}))


if __name__ == "__main__":
  main()
