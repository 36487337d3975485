"""Wall time of one compiled sweep program: 64 seeds against 1.

  python benchmarks/sweep_scaling.py [--seeds=64] [--repeats=3]
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
    python benchmarks/sweep_scaling.py   # the members over 2 CPU devices

Trains the default config (configs/default.py: the notebook's sizes, 5
epochs) once with 1 seed and once with `--seeds` seeds vmapped in one
program, the member axis sharded over every device JAX sees. Compiling is
timed apart from running; the run time is the best of `--repeats` calls of
the compiled program. The goal is 64 seeds in at most 2x the time of 1.
"""

import os
import sys
import time

import jax
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402
from echo import sweep, train  # noqa: E402

_SEEDS = flags.DEFINE_integer('seeds', 64, 'Seeds in the large sweep.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls; the best counts.')
# TODO: on a 2-core CPU, 64 members take about 41x the time of 1 (see
# benchmarks/README.md for what was tried); the 2x goal is still unmeasured
# on a GPU, where one seed leaves the device idle.
_GOAL = 2.0


def _measure(config, num_seeds):
  """(compile seconds, best run seconds) of a sweep of `num_seeds` seeds."""
  member_values = [
    {
      'seed': seed,
      'learning_rate': config.train.learning_rate,
      'echo_step': config.data.echo_step,
    }
    for seed in range(num_seeds)
  ]
  program, arguments, _, compile_s = sweep.compile_members(
    config, member_values
  )
  run_times = []
  for _ in range(_REPEATS.value):
    started = time.perf_counter()
    jax.block_until_ready(program(*arguments))
    run_times.append(time.perf_counter() - started)
  return compile_s, min(run_times)


def main(_):
  logging.set_verbosity(logging.WARNING)
  config = default.get_config()
  train.use_cpu_threads(train.cpu_threads(config))  # As main.py does.
  devices = jax.devices()
  rows = [(n, *_measure(config, n)) for n in (1, _SEEDS.value)]
  (_, _, one), (_, _, many) = rows
  windows = config.num_epochs * (
    config.data.series_length
    // config.data.batch_size
    // config.data.truncated_length
  )
  print(
    f'default config, {windows} windows per member, '
    f'{len(devices)} x {devices[0].platform} device(s), '
    f'best of {_REPEATS.value}'
  )
  print('| seeds | compile s | run s | run s per member |')
  print('|---|---|---|---|')
  for num_seeds, compile_s, run_s in rows:
    print(
      f'| {num_seeds} | {compile_s:.1f} | {run_s:.2f} | '
      f'{run_s / num_seeds:.3f} |'
    )
  ratio = many / one
  verdict = 'meets' if ratio <= _GOAL else 'misses'
  print(
    f'{_SEEDS.value} seeds / 1 seed: {ratio:.1f}x ({verdict} the goal of '
    f'{_GOAL:g}x)'
  )


if __name__ == '__main__':
  app.run(main)
