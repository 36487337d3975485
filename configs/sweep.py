"""A sweep: the run config of configs/default.py plus the values to sweep.

Run it with:

  python main.py --config=configs/sweep.py
  python main.py --config=configs/sweep.py --config.sweep.num_seeds=64 \
    '--config.sweep.learning_rates=(0.1,0.3,1.0)'
  python main.py --config=configs/sweep.py:capacity

Each axis of `config.sweep` replaces the run field it names: the base
`train.learning_rate`, `model.state_size`, ... are not read. A one-element
tuple is an axis that is not swept. Text values need quotes inside the
tuple: `"--config.sweep.cells=('lstm','gru')"`.

Presets:
  (none)    the default run, 8 seeds x 3 learning rates, one compiled program.
  tiny      the tiny run (a few seconds), 2 seeds x 2 learning rates x 2
            state sizes; used by the tests.
  capacity  how far back a small LSTM remembers under windows of 10: echo
            steps 1..12 against state sizes 1..8, 4 seeds each, carry mode,
            with a heatmap of the mean held-out accuracy. Echo steps are
            vmapped, so the 96 combinations compile as 8 programs of 48
            members (about 2 minutes on 2 CPU cores). The rest is the
            default run, 5 epochs of 50 000 symbols: enough for every width
            of 2 or more to reach full accuracy at short echoes, so the map
            shows where memory gives out rather than where training stops;
            the edge at echo step 9 for widths 3 to 5 and 8 may still move
            with longer training.
"""

import ml_collections

from configs import default


def get_config(preset=None):
  """Returns the sweep for `preset` (None, 'tiny' or 'capacity')."""
  if preset not in (None, 'tiny', 'capacity'):
    raise ValueError(
      f"unknown preset {preset!r}: use no preset, 'tiny' or 'capacity'"
    )
  config = default.get_config('tiny' if preset == 'tiny' else None)

  sweep = config.sweep = ml_collections.ConfigDict()
  # Members per setting, with seeds config.seed, config.seed + 1, ...
  sweep.num_seeds = 8
  # Vmapped axes: every value runs side by side in one compiled program.
  sweep.learning_rates = (0.1, 0.3, 1.0)
  sweep.echo_steps = (config.data.echo_step,)
  # Structural axes: every combination of their values compiles its own
  # program, which vmaps all seeds, learning rates and echo steps.
  sweep.modes = (config.mode,)
  sweep.cells = (config.model.cell,)
  sweep.num_layers = (config.model.num_layers,)
  sweep.state_sizes = (config.model.state_size,)
  sweep.truncated_lengths = (config.data.truncated_length,)
  # Two columns of results.csv, e.g. ('echo_step', 'state_size'), to draw
  # the mean held-out accuracy over; () draws no heatmap.
  sweep.heatmap = ()
  # Call jax.distributed.initialize() first, to sweep over the devices of
  # several hosts (one process per host; see README.md).
  sweep.distributed = False

  if preset == 'tiny':
    sweep.num_seeds = 2
    sweep.learning_rates = (0.25, 1.0)
    sweep.state_sizes = (3, 4)
  elif preset == 'capacity':
    sweep.num_seeds = 4
    sweep.learning_rates = (config.train.learning_rate,)
    sweep.echo_steps = tuple(range(1, 13))
    sweep.state_sizes = tuple(range(1, 9))
    sweep.heatmap = ('echo_step', 'state_size')
  return config
