"""Training: it learns, compiles once, and is decided by the seed alone."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from echo import model as model_lib
from echo import train, validate


def _run(config, tmp_path, name='run'):
  return train.train_and_evaluate(config, str(tmp_path / name))


def test_tiny_run_learns_and_traces_its_chunk_once(tiny, tmp_path):
  result = _run(tiny, tmp_path)
  losses = result['losses']
  assert losses.shape == (4, 50)
  # Chance is ln 2 = 0.69; 2 of every 8 targets per row start are unknowable
  # only at the start of each row, so a learner gets far below chance.
  assert losses[0, :10].mean() > 0.6
  assert losses[-1].mean() < 0.25
  assert losses[-1, -10:].mean() < 0.1
  assert result['traces'] == 1
  assert int(result['state'].step) == 4 * 50


def test_same_seed_gives_bit_identical_losses(tiny, tmp_path):
  first = _run(tiny, tmp_path, 'first')
  second = _run(tiny, tmp_path, 'second')
  np.testing.assert_array_equal(first['losses'], second['losses'])


def test_different_seeds_give_different_parameters_and_losses(tiny, tmp_path):
  first = _run(tiny, tmp_path, 'first')
  tiny.seed = 1
  second = _run(tiny, tmp_path, 'second')
  assert not np.allclose(first['losses'], second['losses'])
  first_params = jax.flatten_util.ravel_pytree(first['state'].params)[0]
  second_params = jax.flatten_util.ravel_pytree(second['state'].params)[0]
  assert not np.allclose(first_params, second_params)


def test_a_chunk_that_does_not_divide_the_epoch_changes_nothing(tiny, tmp_path):
  # 50 windows per epoch: chunks of 10 divide it, chunks of 7 leave 1 over.
  whole = _run(tiny, tmp_path, 'whole')
  tiny.train.log_every = 7
  ragged = _run(tiny, tmp_path, 'ragged')
  assert ragged['traces'] == 1
  np.testing.assert_allclose(ragged['losses'], whole['losses'], atol=1e-6)


def test_reset_mode_learns_the_masked_notebook_task(tiny, tmp_path):
  tiny.mode = 'reset'
  losses = _run(tiny, tmp_path)['losses']
  assert losses[-1].mean() < 0.5 * losses[0, :10].mean()


@pytest.mark.parametrize('cell', ['gru', 'simple'])
def test_every_cell_trains(tiny, tmp_path, cell):
  tiny.model.cell = cell
  losses = _run(tiny, tmp_path)['losses']
  assert np.isfinite(losses).all()
  assert losses[-1].mean() < losses[0, :10].mean()


@pytest.mark.parametrize(
  'field, value, allowed',
  [
    ('data.batch_size', 0, 'integer >= 1'),
    ('model.state_size', -4, 'integer >= 1'),
    ('num_epochs', 0, 'integer >= 1'),
    ('data.num_classes', 1, '>= 2'),
    ('data.series_length', 31, 'one window'),
    ('model.cell', 'transformer', "'lstm', 'gru', 'simple'"),
    ('train.optimizer', 'lbfgs', "'adagrad', 'adam'"),
    ('mode', 'both', "'carry', 'reset'"),
    ('train.learning_rate', 0.0, '> 0'),
    ('train.learning_rate', float('inf'), 'finite and > 0'),
    ('data.echo_step', 400, 'steps in a row'),
    ('checkpoint.every_chunks', 0, 'integer >= 1'),
    ('cpu_threads', -1, '>= 0'),
    ('data.truncated_length', 0, 'integer >= 1'),
    ('model.num_layers', 0, 'integer >= 1'),
    ('train.log_every', -10, 'integer >= 1'),
    ('checkpoint.keep', 0, 'integer >= 1'),
    ('seed', 2**31, 'from -2147483648 to 2147483647'),
    ('seed', -(2**31) - 1, 'from -2147483648 to 2147483647'),
    ('model.forget_bias', float('nan'), 'must be finite'),
    ('train.initial_accumulator', float('nan'), 'finite and >= 0'),
    ('train.initial_accumulator', -0.1, 'finite and >= 0'),
  ],
)
def test_a_config_that_cannot_work_fails_before_anything_is_written(
  tiny, tmp_path, field, value, allowed
):
  *parents, leaf = field.split('.')
  holder = tiny
  for parent in parents:
    holder = holder[parent]
  holder[leaf] = value
  with pytest.raises(validate.ConfigError) as error:
    _run(tiny, tmp_path)
  message = str(error.value)
  assert f'config.{field}=' in message and allowed in message
  assert '\n' not in message
  assert not (tmp_path / 'run').exists()


def test_echo_step_must_fit_a_window_in_reset_mode(tiny, tmp_path):
  tiny.mode = 'reset'
  tiny.data.echo_step = tiny.data.truncated_length
  with pytest.raises(validate.ConfigError, match='config.data.echo_step=8'):
    _run(tiny, tmp_path)
  tiny.mode = 'carry'  # Carry mode can remember across window edges.
  validate.validate(tiny)


def test_fast_lstm_paths_leave_the_loss_curve_unchanged(
  tiny, tmp_path, monkeypatch
):
  fast = _run(tiny, tmp_path, 'fast')['losses']

  def plain_lstm_step(kernel, bias, inputs, c, h, forget_bias):
    gates = jnp.concatenate([inputs, h], -1) @ kernel + bias
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    c = c * jax.nn.sigmoid(f + forget_bias) + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jnp.tanh(c) * jax.nn.sigmoid(o)

  # The straightforward model: library matmuls and JAX's own backward.
  monkeypatch.setattr(model_lib, 'SMALL_KERNEL', 0)
  monkeypatch.setattr(model_lib, 'lstm_step', plain_lstm_step)
  # Traced afresh: the saved programs of this config are the fast ones.
  tiny.compile_cache_dir = ''
  plain = _run(tiny, tmp_path, 'plain')['losses']
  assert not np.array_equal(fast, 0)
  # The monkeypatched model was the one trained: the sums round differently.
  assert not np.array_equal(fast, plain)
  # Sums in another order round differently, and training compounds it: the
  # first 100 windows agree within 1e-6, the whole run within 1e-5.
  np.testing.assert_allclose(fast[:2], plain[:2], rtol=0, atol=1e-6)
  np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5)


def test_an_infinite_evaluation_loss_stops_the_run(tiny, tmp_path):
  # Training losses stay finite (about 1e35) but the evaluation overflows.
  tiny.train.optimizer = 'sgd'
  tiny.train.learning_rate = 3e36
  with pytest.raises(train.Diverged, match='evaluation loss inf at epoch 0'):
    _run(tiny, tmp_path)
  metrics = (tmp_path / 'run' / 'metrics.jsonl').read_text()
  assert 'Infinity' not in metrics and 'eval_loss' not in metrics


def test_the_notebook_preset_reuses_one_series_with_the_notebooks_settings():
  notebook = default.get_config('notebook')
  assert notebook.mode == 'reset'
  assert (notebook.num_epochs, notebook.data.series_length) == (5, 50_000)
  assert (notebook.data.batch_size, notebook.data.truncated_length) == (5, 10)
  assert (notebook.model.state_size, notebook.model.num_layers) == (4, 3)
  assert notebook.data.echo_step == 3
  assert (notebook.train.optimizer, notebook.train.learning_rate) == (
    'adagrad',
    0.3,
  )
  data_key = jax.random.key_data(jax.random.key(0))
  for config, same in ((notebook, True), (default.get_config(), False)):
    trainer = train._Trainer(config)
    first, second = (trainer.epoch_windows(data_key, e)[0] for e in (0, 1))
    assert np.array_equal(first, second) == same
