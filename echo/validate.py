"""Checks a config before anything is built, so a bad one fails in one line.

Every message names the config field and what it may hold, for example

  config.data.echo_step=10 must be < config.data.truncated_length=10 in
  reset mode
"""

import math

CELLS = ('lstm', 'gru', 'simple')
OPTIMIZERS = ('adagrad', 'adam', 'rmsprop', 'sgd')
MODES = ('carry', 'reset')


class ConfigError(ValueError):
  """A config field holds a value that cannot work."""


def _field(config, path):
  for part in path.split('.'):
    config = config[part]
  return config


def _integer(value, least):
  return (
    isinstance(value, int) and not isinstance(value, bool) and value >= least
  )


def _positive(config, path):
  value = _field(config, path)
  if not _integer(value, 1):
    raise ConfigError(f'config.{path}={value!r} must be an integer >= 1')
  return value


def _choice(value, path, allowed):
  if value not in allowed:
    names = ', '.join(repr(a) for a in allowed)
    raise ConfigError(f'config.{path}={value!r} must be one of {names}')


# Seeds enter the compiled programs as int32 values.
SEEDS = (-(2**31), 2**31 - 1)


def validate(config):
  """Raises ConfigError naming the first field of `config` that cannot work."""
  if not (_integer(config.seed, SEEDS[0]) and config.seed <= SEEDS[1]):
    raise ConfigError(
      f'config.seed={config.seed!r} must be an integer from {SEEDS[0]} to '
      f'{SEEDS[1]}'
    )
  for path in (
    'num_epochs',
    'data.series_length',
    'data.batch_size',
    'data.truncated_length',
    'model.state_size',
    'model.num_layers',
    'train.log_every',
    'checkpoint.every_chunks',
    'checkpoint.keep',
  ):
    _positive(config, path)
  _choice(config.mode, 'mode', MODES)
  _choice(config.model.cell, 'model.cell', CELLS)
  _choice(config.train.optimizer, 'train.optimizer', OPTIMIZERS)

  data = config.data
  if not _integer(data.num_classes, 2):
    raise ConfigError(
      f'config.data.num_classes={data.num_classes!r} must be an integer >= 2'
    )
  if not _integer(data.echo_step, 0):
    raise ConfigError(
      f'config.data.echo_step={data.echo_step!r} must be an integer >= 0'
    )
  if config.mode == 'reset' and data.echo_step >= data.truncated_length:
    raise ConfigError(
      f'config.data.echo_step={data.echo_step} must be < '
      f'config.data.truncated_length={data.truncated_length} in reset mode'
    )
  one_window = data.batch_size * data.truncated_length
  if data.series_length < one_window:
    raise ConfigError(
      f'config.data.series_length={data.series_length} must be >= '
      f'batch_size * truncated_length = {one_window} (one window)'
    )
  row = data.series_length // one_window * data.truncated_length
  if data.echo_step >= row:
    raise ConfigError(
      f'config.data.echo_step={data.echo_step} must be < {row}, the steps '
      'in a row of the series (no target could be known)'
    )
  if not 0 < config.train.learning_rate < math.inf:
    raise ConfigError(
      f'config.train.learning_rate={config.train.learning_rate} must be '
      'finite and > 0'
    )
  if not math.isfinite(config.model.forget_bias):
    raise ConfigError(
      f'config.model.forget_bias={config.model.forget_bias} must be finite'
    )
  if not 0 <= config.train.initial_accumulator < math.inf:
    raise ConfigError(
      'config.train.initial_accumulator='
      f'{config.train.initial_accumulator} must be finite and >= 0'
    )
  if config.cpu_threads < 0:
    raise ConfigError(
      f'config.cpu_threads={config.cpu_threads} must be >= 0 (0 chooses)'
    )


def _axis(config, path, what, allowed):
  """Checks that the tuple at `path` is non-empty and each value `allowed`."""
  values = _field(config, path)
  if not (
    isinstance(values, (tuple, list))
    and values
    and all(allowed(value) for value in values)
  ):
    raise ConfigError(f'config.{path}={values!r} must be a non-empty {what}')


def validate_sweep(config):
  """Raises ConfigError naming the first field of `config.sweep` that cannot
  work; `echo.sweep.validate` also checks every run the sweep makes."""
  _positive(config, 'sweep.num_seeds')
  for path, least in (
    ('sweep.state_sizes', 1),
    ('sweep.num_layers', 1),
    ('sweep.truncated_lengths', 1),
    ('sweep.echo_steps', 0),
  ):
    _axis(
      config,
      path,
      f'tuple of integers >= {least}',
      lambda value, least=least: _integer(value, least),
    )
  _axis(
    config,
    'sweep.learning_rates',
    'tuple of numbers > 0',
    lambda value: (
      isinstance(value, (int, float))
      and not isinstance(value, bool)
      and 0 < value < math.inf
    ),
  )
  for path, allowed in (
    ('sweep.cells', CELLS),
    ('sweep.modes', MODES),
  ):
    names = ', '.join(repr(a) for a in allowed)
    _axis(
      config, path, f'tuple of {names}', lambda value, a=allowed: value in a
    )
