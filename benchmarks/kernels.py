"""Why a window costs what it does on XLA's CPU backend: kernels x overhead.

  python benchmarks/kernels.py

1. Counts the kernels (fusions, library calls, copies, loops) that one window
   of the default config's compiled chunk runs: the loop bodies are weighted
   by how often they run (the time scans by truncated_length).
2. Measures what one kernel costs when there is almost no arithmetic in it:
   a scanned chain of dependent tiny elementwise ops that XLA cannot fuse
   (each goes through an optimization barrier).
The product is a floor for this program structure however fast the
arithmetic, and is compared with the measured steady time per window.
"""

import collections
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402
from echo import train  # noqa: E402

_KERNELS = ('fusion', 'dot', 'copy', 'custom-call', 'while', 'conditional')


def _computations(text):
  """{name: body text} of an optimized HLO module."""
  parts = re.split(r'\n(?=(?:ENTRY )?%\S+ .*\{\n)', text)
  named = {}
  for part in parts:
    match = re.match(r'(?:ENTRY )?(%\S+) ', part)
    if match:
      named[match[1]] = part
  return named


def _count(name, computations, trip_counts, weight, totals):
  """Adds the kernels `name` runs, `weight` times, into `totals`."""
  body = computations[name]
  for kind in _KERNELS:
    totals[kind] += weight * len(re.findall(rf'= \S+ {kind}\(', body))
  for line in body.splitlines():
    loop = re.search(r'while\(.*body=(%[\w.\-]+)', line)
    if loop:
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      trips = int(trips[1]) if trips else trip_counts
      _count(loop[1], computations, trip_counts, weight * trips, totals)


def window_kernels(config):
  trainer = train._Trainer(config)
  state, data_key, _ = trainer.start(config.seed)
  inputs, targets = trainer.epoch_windows(data_key, 0)
  carries = trainer.model.initial_carries(config.data.batch_size)
  compiled = (
    jax.jit(trainer._train_chunk)
    .lower(state, carries, inputs, targets, 0)
    .compile()
  )
  text = compiled.as_text()
  computations = _computations(text)
  entry = re.search(r'ENTRY (%\S+) ', text)[1]
  totals = collections.Counter()
  _count(entry, computations, config.data.truncated_length, 1, totals)
  return {kind: count / trainer.chunk for kind, count in totals.items()}


def kernel_overhead(length=200, repeats=20):
  """Seconds per unfusable, nearly empty kernel in a scanned chain."""

  def chain(x):
    for _ in range(length):
      x = jax.lax.optimization_barrier(jnp.tanh(x) + 1.0)
    return x

  @jax.jit
  def loop(x):
    return jax.lax.scan(lambda c, _: (chain(c), None), x, None, length=10)[0]

  x = jnp.zeros((5, 4))
  loop(x).block_until_ready()
  times = []
  for _ in range(repeats):
    begin = time.perf_counter()
    loop(x).block_until_ready()
    times.append(time.perf_counter() - begin)
  return float(np.median(times)) / (10 * length)


def main():
  config = default.get_config()
  counts = window_kernels(config)
  total = sum(v for k, v in counts.items() if k != 'while')
  overhead = kernel_overhead()
  print('kernels per window, default config:')
  for kind, count in sorted(counts.items()):
    print(f'  {kind:12s} {count:7.1f}')
  print(f'  {"total":12s} {total:7.1f}')
  print(f'cost of one nearly empty kernel: {overhead * 1e6:.2f} us')
  print(f'floor for this structure: {total * overhead * 1e6:.0f} us per window')


if __name__ == '__main__':
  main()
