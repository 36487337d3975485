"""Final loss of the default config and the notebook preset, seeds 0..4.

  python benchmarks/loss_by_seed.py [--seeds=5]

Prints a Markdown table: for carry mode (the default config) the mean loss of
the last 100 windows of the last epoch; for the notebook preset (reset mode,
masked windows) the mean over the whole last epoch, as the notebook reports.
"""

import os
import sys
import tempfile

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402
from echo import train  # noqa: E402

_SEEDS = flags.DEFINE_integer('seeds', 5, 'Seeds 0..N-1 per mode.')
_BOUND = 0.0005


def main(_):
  logging.set_verbosity(logging.WARNING)
  rows = []
  for seed in range(_SEEDS.value):
    row = [seed]
    for preset in (None, 'notebook'):
      config = default.get_config(preset)
      config.seed = seed
      with tempfile.TemporaryDirectory() as workdir:
        losses = train.train_and_evaluate(config, workdir)['losses']
      row.append(
        losses[-1, -100:].mean() if preset is None else losses[-1].mean()
      )
    rows.append(row)
  print('| seed | carry: last 100 windows | notebook: last epoch |')
  print('|---|---|---|')
  for seed, carry, reset in rows:
    print(f'| {seed} | {carry:.5f} | {reset:.5f} |')
  for column, name in ((1, 'carry'), (2, 'notebook')):
    met = sum(row[column] <= _BOUND for row in rows)
    print(f'{name}: {met} of {len(rows)} seeds at or below {_BOUND}')


if __name__ == '__main__':
  app.run(main)
