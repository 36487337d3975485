"""The echo task's data: a pure function of a PRNG key and the data config.

A series is `[batch, length]` integer symbols drawn uniformly from
`num_classes`; the target at step t is the input at step t - echo_step. The
series is cut along time into windows of `truncated_length` steps, so row r of
window k + 1 continues row r of window k.

Targets that no model could know are set to 0, and `knowable` marks the rest:
  carry mode: the first `echo_step` steps of each row (state flows on).
  reset mode: the first `echo_step` steps of every window (state restarts).
"""

import functools

import jax
import jax.numpy as jnp


def num_windows(data_config):
  """Windows per epoch: series_length // batch_size // truncated_length."""
  return (
    data_config.series_length
    // data_config.batch_size
    // data_config.truncated_length
  )


def knowable(length, truncated_length, echo_step, mode):
  """Bool `[length]`: True where the target can be inferred from the inputs."""
  steps = jnp.arange(length)
  if mode == 'reset':
    steps = steps % truncated_length
  return steps >= echo_step


def make_series(
  key, *, batch_size, length, num_classes, echo_step, truncated_length, mode
):
  """Draws one series and its echo targets.

  Args:
    key: PRNG key.
    batch_size: rows of the series.
    length: steps per row.
    num_classes: symbols are drawn uniformly from [0, num_classes).
    echo_step: delay between an input and its target; an int or a traced
      int scalar.
    truncated_length: steps per window (sets the reset-mode mask).
    mode: 'carry' or 'reset'.

  Returns:
    (inputs, targets), each int32 `[batch, length]`.
  """
  inputs = jax.random.randint(key, (batch_size, length), 0, num_classes)
  shifted = jnp.roll(inputs, echo_step, axis=1)
  mask = knowable(length, truncated_length, echo_step, mode)
  targets = jnp.where(mask[None, :], shifted, 0)
  return inputs, targets


def to_windows(series, truncated_length):
  """`[batch, length]` -> `[num_windows, batch, truncated_length]`.

  Steps past the last whole window are dropped.
  """
  batch_size, length = series.shape
  count = length // truncated_length
  series = series[:, : count * truncated_length]
  series = series.reshape(batch_size, count, truncated_length)
  return series.transpose(1, 0, 2)


def make_windows(key, data_config, mode, echo_step=None):
  """One epoch of windows for `data_config` and `mode` ('carry' or 'reset').

  Args:
    key: PRNG key.
    data_config: the config's `data` field.
    mode: 'carry' or 'reset'.
    echo_step: replaces `data_config.echo_step` when given. It changes no
      shape, so it may be a traced value: a sweep vmaps over it.

  Returns:
    (inputs, targets), each int32 `[num_windows, batch, truncated_length]`.
  """
  return _make_windows(
    key,
    batch_size=data_config.batch_size,
    length=num_windows(data_config) * data_config.truncated_length,
    num_classes=data_config.num_classes,
    echo_step=data_config.echo_step if echo_step is None else echo_step,
    truncated_length=data_config.truncated_length,
    mode=mode,
  )


@functools.partial(
  jax.jit,
  static_argnames=(
    'batch_size',
    'length',
    'num_classes',
    'truncated_length',
    'mode',
  ),
)
def _make_windows(key, *, truncated_length, **series_args):
  inputs, targets = make_series(
    key, truncated_length=truncated_length, **series_args
  )
  return (
    to_windows(inputs, truncated_length),
    to_windows(targets, truncated_length),
  )
