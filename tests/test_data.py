"""The echo data: targets, masks, window layout, keys."""

import jax
import numpy as np
import pytest

from echo import data, validate


def _series(mode, key=0, echo_step=3, num_classes=2):
  return data.make_series(
    jax.random.key(key),
    batch_size=4,
    length=60,
    num_classes=num_classes,
    echo_step=echo_step,
    truncated_length=10,
    mode=mode,
  )


@pytest.mark.parametrize('mode', ['carry', 'reset'])
def test_target_is_input_echo_steps_ago_where_knowable(mode):
  inputs, targets = map(np.asarray, _series(mode))
  known = np.asarray(data.knowable(60, 10, 3, mode))
  for t in np.flatnonzero(known):
    np.testing.assert_array_equal(targets[:, t], inputs[:, t - 3])
  np.testing.assert_array_equal(targets[:, ~known], 0)


def test_carry_mode_masks_only_the_start_of_each_row():
  known = np.asarray(data.knowable(60, 10, 3, 'carry'))
  assert np.flatnonzero(~known).tolist() == [0, 1, 2]


def test_reset_mode_masks_the_start_of_every_window():
  known = np.asarray(data.knowable(60, 10, 3, 'reset'))
  expected = [w * 10 + s for w in range(6) for s in range(3)]
  assert np.flatnonzero(~known).tolist() == expected


def test_echo_step_zero_masks_nothing():
  inputs, targets = map(np.asarray, _series('reset', echo_step=0))
  np.testing.assert_array_equal(inputs, targets)


def test_windows_continue_each_row_in_order(tiny):
  inputs, targets = map(
    np.asarray, data.make_windows(jax.random.key(1), tiny.data, 'carry')
  )
  num_windows, batch, steps = inputs.shape
  assert (batch, steps) == (tiny.data.batch_size, tiny.data.truncated_length)
  # Row r of window k + 1 starts where row r of window k stopped: the echo
  # of the last inputs of window k is in the first targets of window k + 1.
  echo = tiny.data.echo_step
  for k in range(num_windows - 1):
    np.testing.assert_array_equal(
      targets[k + 1, :, :echo], inputs[k, :, steps - echo :]
    )
  rows = inputs.transpose(1, 0, 2).reshape(batch, -1)
  series, _ = data.make_series(
    jax.random.key(1),
    batch_size=batch,
    length=num_windows * steps,
    num_classes=tiny.data.num_classes,
    echo_step=echo,
    truncated_length=steps,
    mode='carry',
  )
  np.testing.assert_array_equal(rows, series)


def test_number_of_windows_drops_the_ragged_end(tiny):
  tiny.data.series_length = 1_000
  tiny.data.batch_size = 3
  tiny.data.truncated_length = 7
  expected = 1_000 // 3 // 7
  assert data.num_windows(tiny.data) == expected == 47
  inputs, targets = data.make_windows(jax.random.key(0), tiny.data, 'carry')
  assert inputs.shape == targets.shape == (expected, 3, 7)


def test_a_series_shorter_than_one_window_is_a_clear_error(tiny):
  tiny.data.series_length = tiny.data.batch_size * 8 - 1
  with pytest.raises(validate.ConfigError, match='config.data.series_length'):
    validate.validate(tiny)


def test_keys_decide_the_series():
  first, _ = _series('carry', key=0)
  again, _ = _series('carry', key=0)
  other, _ = _series('carry', key=1)
  np.testing.assert_array_equal(first, again)
  assert np.mean(np.asarray(first) != np.asarray(other)) > 0.3


def test_more_symbols_are_drawn_uniformly():
  inputs, targets = _series('carry', num_classes=5)
  inputs = np.asarray(inputs)
  assert set(np.unique(inputs)) == set(range(5))
  np.testing.assert_array_equal(np.asarray(targets)[:, 3:], inputs[:, :-3])


@pytest.mark.parametrize('mode', ['carry', 'reset'])
def test_a_traced_echo_step_gives_the_windows_of_a_fixed_one(tiny, mode):
  # A sweep vmaps over echo_step, so it must work as a traced value.
  key = jax.random.key(2)
  echo_steps = jax.numpy.arange(4)
  traced = jax.vmap(
    lambda echo_step: data.make_windows(key, tiny.data, mode, echo_step)
  )(echo_steps)
  for echo_step in range(4):
    tiny.data.echo_step = echo_step
    fixed = data.make_windows(key, tiny.data, mode)
    for got, want in zip(traced, fixed, strict=True):
      np.testing.assert_array_equal(got[echo_step], want)
