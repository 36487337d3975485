"""Saved programs: a second run loads what the first compiled, and nothing
it loads can be another program's."""

import os

import jax
import numpy as np
import pytest

from echo import programs, train


def _program_files(cache):
  folder = os.path.join(cache, 'programs')
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _run(config, tmp_path, name):
  return train.train_and_evaluate(config, str(tmp_path / name))


@pytest.fixture
def cached(tiny, tmp_path):
  """The tiny config with a saved-program folder of its own."""
  tiny.compile_cache_dir = str(tmp_path / 'cache')
  return tiny


def _skip_unless_saving():
  if not programs.saving_allowed():
    pytest.skip('a persistent compilation cache is configured in-process')


def test_a_second_run_loads_every_program_and_trains_the_same(cached, tmp_path):
  _skip_unless_saving()
  first = _run(cached, tmp_path, 'first')
  saved = _program_files(cached.compile_cache_dir)
  assert [name.split('-')[0] for name in saved] == [
    'epoch_windows',
    'evaluate',
    'start',
    'train_chunk',
  ]
  second = _run(cached, tmp_path, 'second')
  assert _program_files(cached.compile_cache_dir) == saved
  assert second['traces'] == 1 and second['eval_traces'] == 1
  np.testing.assert_array_equal(second['losses'], first['losses'])

  cached.compile_cache_dir = ''
  traced = _run(cached, tmp_path, 'traced')
  np.testing.assert_array_equal(traced['losses'], first['losses'])


def test_the_key_follows_what_is_computed_not_which_run(cached):
  def chunk_path(config):
    trainer = train._Trainer(config)
    state = jax.eval_shape(trainer._start, config.seed)[0]
    carries = trainer.model.initial_carries(config.data.batch_size)
    windows = jax.eval_shape(trainer._epoch_windows, np.zeros(2, np.uint32), 0)
    arguments = (state, carries, *windows, 0)
    leaves, in_tree = jax.tree.flatten(arguments)
    signature = (in_tree, tuple(jax.typeof(leaf) for leaf in leaves))
    return trainer.train_chunk.path(signature)

  base = chunk_path(cached)
  cached.seed = 7
  cached.num_epochs = 9
  cached.checkpoint.keep = 1
  assert chunk_path(cached) == base
  cached.cpu_threads = 2  # Keyed by the thread count in force instead.
  cached.compile_cache_dir = cached.compile_cache_dir + '-moved'
  assert os.path.basename(chunk_path(cached)) == os.path.basename(base)
  cached.model.state_size = 8
  assert os.path.basename(chunk_path(cached)) != os.path.basename(base)
  cached.model.state_size = 4
  # Every other field counts, even one that the chunk reads from its state.
  cached.train.learning_rate = 0.1
  assert os.path.basename(chunk_path(cached)) != os.path.basename(base)
  cached.train.learning_rate = 0.5
  assert os.path.basename(chunk_path(cached)) == os.path.basename(base)
  # So do JAX's settings that change what a program computes.
  precision = jax.config.jax_default_matmul_precision
  try:
    jax.config.update('jax_default_matmul_precision', 'highest')
    assert os.path.basename(chunk_path(cached)) != os.path.basename(base)
  finally:
    jax.config.update('jax_default_matmul_precision', precision)


@pytest.mark.parametrize('damage', ['cut short', 'one byte changed'])
def test_a_damaged_program_is_compiled_again_and_replaced(
  cached, tmp_path, damage
):
  _skip_unless_saving()
  first = _run(cached, tmp_path, 'first')
  folder = os.path.join(cached.compile_cache_dir, 'programs')
  (chunk,) = [name for name in os.listdir(folder) if 'train_chunk' in name]
  path = os.path.join(folder, chunk)
  with open(path, 'rb') as f:
    intact = f.read()
  assert programs._read(path) is not None
  with open(path, 'r+b') as f:
    if damage == 'cut short':
      f.truncate(len(intact) // 2)
    else:
      # Inside the executable's machine code, where a load would succeed.
      f.seek(len(intact) // 2)
      f.write(bytes([intact[len(intact) // 2] ^ 0xFF]))
  assert programs._read(path) is None

  second = _run(cached, tmp_path, 'second')
  np.testing.assert_array_equal(second['losses'], first['losses'])
  assert second['traces'] == 1
  # The damaged file does not load; the one in its place now does.
  assert programs._read(path) is not None


def test_no_program_is_saved_beside_a_persistent_compilation_cache():
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update('jax_compilation_cache_dir', '/tmp/xla')
    assert not programs.saving_allowed()
    jax.config.update('jax_compilation_cache_dir', None)
    assert programs.saving_allowed()
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
