"""The echo task with the notebook's settings, trained with truncated BPTT.

Run it with:

  python main.py --config=configs/default.py
  python main.py --config=configs/default.py:notebook
  python main.py --config=configs/default.py:tiny \
    --config.train.learning_rate=0.1

The same command on the same --workdir resumes the run from its newest
checkpoint; it may change `num_epochs` and `checkpoint.*`, nothing else (add
--fresh to move the old run aside and start again).

Presets:
  (none)    the notebook's sizes, state carried from window to window.
  notebook  the notebook's exact procedure: every window starts from zero
            state, the first `echo_step` targets of every window are 0, and
            one series is reused for every epoch.
  tiny      a few seconds on a laptop CPU; used by the tests.
"""

import os

import ml_collections


def get_config(preset=None):
  """Returns the config for `preset` (None, 'notebook' or 'tiny')."""
  config = ml_collections.ConfigDict()

  # Seeds the parameters, every training series and the evaluation series.
  config.seed = 0
  # Passes over a series; each epoch starts again from zero state.
  config.num_epochs = 5
  # 'carry': the state flows from window to window within an epoch, and only
  #   the first `echo_step` targets of each row of the series are unknowable.
  # 'reset': every window starts from zero state, and the first `echo_step`
  #   targets of every window are set to 0 (the notebook's procedure).
  config.mode = 'carry'
  # Compiled programs kept between runs, so that a second run of the same
  # config neither traces nor compiles: a run's own under programs/ (see
  # echo/programs.py), a sweep's in JAX's compilation cache under xla/.
  # '' turns both off.
  config.compile_cache_dir = os.path.join(
    os.environ.get('XDG_CACHE_HOME', '~/.cache'), 'echo', 'jax'
  )
  # Threads XLA's CPU backend runs the programs on, read once when JAX first
  # computes in the process (main.py sets it before that; no effect on GPU).
  # 0 chooses: 1 when every kernel of the model is small enough for the
  # fused small matmuls, where passing tiny kernels between threads costs
  # more than it gains (the default model's windows train about a quarter
  # faster); otherwise every core.
  config.cpu_threads = 0

  config.data = ml_collections.ConfigDict()
  # Symbols in one epoch's series, before it is laid out as [batch, length].
  config.data.series_length = 50_000
  # Rows of the series, trained side by side.
  config.data.batch_size = 5
  # Steps per window: gradients stop at window edges.
  config.data.truncated_length = 10
  # The target at step t is the input at step t - echo_step.
  config.data.echo_step = 3
  # Distinct symbols, drawn uniformly; 2 is a bit stream.
  config.data.num_classes = 2
  # Draw a new series for every epoch (False reuses the first one).
  config.data.new_series_each_epoch = True

  config.model = ml_collections.ConfigDict()
  # Recurrent cell of every layer: 'lstm', 'gru' or 'simple' (tanh).
  config.model.cell = 'lstm'
  # Units per layer; the embedding has the same width.
  config.model.state_size = 4
  # Stacked layers, each with its own parameters.
  config.model.num_layers = 3
  # Added to the LSTM forget gate before its sigmoid.
  config.model.forget_bias = 1.0

  config.train = ml_collections.ConfigDict()
  # An optax optimizer: 'adagrad', 'adam', 'rmsprop' or 'sgd'.
  config.train.optimizer = 'adagrad'
  # Step size of the optimizer (the notebook's 0.3 for Adagrad).
  config.train.learning_rate = 0.3
  # Adagrad's starting sum of squares (TF1's default, so 0.3 means the same).
  config.train.initial_accumulator = 0.1
  # Windows between two progress lines; also the windows trained per
  # compiled call. Checkpoints fall between these chunks, so a run can only
  # be resumed with the same value.
  config.train.log_every = 100

  # Checkpoints in WORKDIR/checkpoints hold everything needed to go on
  # exactly: parameters, optimizer state, carries and the place in the data.
  # Both fields may change when a run is resumed.
  config.checkpoint = ml_collections.ConfigDict()
  # Chunks of `train.log_every` windows between two checkpoints; one is also
  # saved at the end of the run and when it is stopped (Ctrl-C, SIGTERM).
  config.checkpoint.every_chunks = 10
  # Newest checkpoints kept; older ones are deleted.
  config.checkpoint.keep = 3

  if preset is None:
    pass
  elif preset == 'notebook':
    config.mode = 'reset'
    config.data.new_series_each_epoch = False
  elif preset == 'tiny':
    config.num_epochs = 4
    config.data.series_length = 1_600
    config.data.batch_size = 4
    config.data.truncated_length = 8
    config.data.echo_step = 2
    config.model.num_layers = 2
    config.train.learning_rate = 0.5
    config.train.log_every = 10
    config.checkpoint.every_chunks = 5
  else:
    raise ValueError(
      f"unknown preset {preset!r}: use no preset, 'notebook' or 'tiny'"
    )
  return config
