"""How many threads XLA's CPU backend gets, and that the setting reaches it."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from configs import default
from configs import sweep as sweep_configs
from echo import sweep, train


def test_small_models_get_one_thread_and_large_ones_every_core():
  config = default.get_config()
  assert train.cpu_threads(config) == 1
  config.model.state_size = 64
  assert train.cpu_threads(config) is None
  config.cpu_threads = 3
  assert train.cpu_threads(config) == 3


def test_a_sweep_gets_one_thread_only_if_every_combination_does():
  config = sweep_configs.get_config('tiny')
  assert sweep.cpu_threads(config) == 1
  config.sweep.state_sizes = (4, 64)
  assert sweep.cpu_threads(config) is None


def _threads_started(count):
  """Threads of a fresh process that set `count` and then ran a program."""
  code = (
    'import os, jax, jax.numpy as jnp\n'
    'from echo import train\n'
    f'train.use_cpu_threads({count})\n'
    'jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()\n'
    "print(len(os.listdir('/proc/self/task')))\n"
  )
  environment = {k: v for k, v in os.environ.items() if k != 'PJRT_NPROC'}
  done = subprocess.run(
    [sys.executable, '-c', code],
    cwd=ROOT,
    env=environment,
    capture_output=True,
    text=True,
    check=True,
  )
  return int(done.stdout.split()[-1])


@pytest.mark.skipif(
  not os.path.isdir('/proc/self/task'), reason='counts threads in /proc'
)
def test_the_thread_count_reaches_the_cpu_backend():
  # XLA's CPU client starts a pool of that many threads (and a few more of
  # its own), so four cost more threads than one.
  assert _threads_started(4) > _threads_started(1)
