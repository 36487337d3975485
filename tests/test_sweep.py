"""Sweeps: the grid's outputs, one compiled program per combination, members
that equal their runs alone, diverging members kept apart, and sharding over
devices."""

import csv
import json
import logging
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT
from matplotlib import colormaps

from configs import default
from configs import sweep as sweep_configs
from echo import (
  data,
  evaluate,
  metrics,
  sweep,
  sweep_plot,
  train,
  validate,
  workdir,
)

# The grid the tests share: 3 seeds x 2 learning rates x 2 state sizes, so
# 2 compiled programs of 6 members (padded to 8 on 4 devices).
_GRID = {'num_seeds': 3, 'learning_rates': (0.3, 1.0), 'state_sizes': (3, 4)}
_FLAGS = (
  '--config=configs/sweep.py:tiny',
  '--config.sweep.num_seeds=3',
  '--config.sweep.learning_rates=(0.3,1.0)',
  '--config.sweep.state_sizes=(3,4)',
)
_SCORES = ('final_loss', 'eval_loss', 'eval_accuracy')


def _grid_config():
  config = sweep_configs.get_config('tiny')
  config.sweep.update(_GRID)
  return config


def _main(*args, devices=None):
  env = dict(os.environ)
  if devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return subprocess.run(
    [sys.executable, 'main.py', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


class _Messages(logging.Handler):
  """Keeps the message of every record it is given."""

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
  """The grid run in this process, on its one CPU device.

  Adds `jax_log`: what JAX logged with `jax_log_compiles` on, a line as each
  program is lowered and as it is compiled (or read from the cache).
  """
  assert len(jax.devices()) == 1
  log, logger = _Messages(), logging.getLogger('jax')
  logger.addHandler(log)
  try:
    with jax.log_compiles(True):
      result = sweep.run(_grid_config(), str(tmp_path_factory.mktemp('grid')))
  finally:
    logger.removeHandler(log)
  return {**result, 'jax_log': log.messages}


@pytest.fixture(scope='module')
def main_run(tmp_path_factory):
  """The grid run by main.py in a subprocess that sees 4 CPU devices."""
  workdir = tmp_path_factory.mktemp('main') / 'sweep'
  done = _main(*_FLAGS, f'--workdir={workdir}', devices=4)
  assert done.returncode == 0, done.stderr
  return workdir, done


def _read_results(workdir):
  with open(workdir / 'results.csv', newline='') as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


def _solo(config, values, tmp_path):
  """The run main.py makes alone for one member's values."""
  config = config.copy_and_resolve_references()
  del config['sweep']
  config.seed = values['seed']
  config.train.learning_rate = values['learning_rate']
  config.data.echo_step = values['echo_step']
  config.model.state_size = values['state_size']
  config.mode = values['mode']
  name = '-'.join(str(values[key]) for key in sweep.VALUE_COLUMNS)
  return train.train_and_evaluate(config, str(tmp_path / name))


def test_main_runs_the_grid_and_writes_every_output(main_run):
  workdir, done = main_run
  assert 'Combination 2 of 2' in done.stderr
  config = json.loads((workdir / 'config.json').read_text())
  assert config['sweep']['learning_rates'] == [0.3, 1.0]

  columns, rows = _read_results(workdir)
  assert tuple(columns) == sweep.VALUE_COLUMNS + sweep.SCORE_COLUMNS
  members = sorted(
    (int(row['seed']), float(row['learning_rate']), int(row['state_size']))
    for row in rows
  )
  assert members == sorted(
    (seed, rate, size)
    for seed in (0, 1, 2)
    for rate in (0.3, 1.0)
    for size in (3, 4)
  )
  assert {row['echo_step'] for row in rows} == {'2'}
  assert {row['diverged'] for row in rows} == {'False'}
  # The tiny run has 50 windows per epoch: the final loss is the last epoch.
  for row in rows:
    assert 0 < float(row['final_loss']) < 0.7
    assert 0.5 < float(row['eval_accuracy']) <= 1

  with np.load(workdir / 'losses.npz') as curves:
    assert curves['losses'].shape == (12, 4, 50)
    np.testing.assert_allclose(
      curves['losses'][:, -1].mean(-1),
      [float(row['final_loss']) for row in rows],
      rtol=1e-6,
    )
    for name in columns:
      assert curves[name].shape == (12,)
    assert [str(seed) for seed in curves['seed']] == [
      row['seed'] for row in rows
    ]

  header = (workdir / 'final_loss.png').read_bytes()[:24]
  assert header[:8] == b'\x89PNG\r\n\x1a\n' and header[12:16] == b'IHDR'
  width, height = struct.unpack('>II', header[16:24])
  assert 400 <= width <= 4000 and 200 <= height <= 2000
  assert not (workdir / 'heatmap.png').exists()


def test_each_combination_is_one_program_of_all_its_members(grid):
  # Every program XLA compiled during the sweep: one per state size, each
  # taking the 6 members of its combination as arrays [6].
  compiled = [
    line.split(' in ')[0]
    for line in grid['jax_log']
    if line.startswith('Finished XLA compilation of ')
  ]
  assert compiled == ['Finished XLA compilation of jit(train_members)'] * 2
  lowered = [line for line in grid['jax_log'] if line.startswith('Compiling ')]
  assert len(lowered) == 2
  for line in lowered:
    assert line.startswith(
      'Compiling jit(train_members) with global shapes and types '
      '(ShapedArray(int32[6]), ShapedArray(float32[6]), '
      'ShapedArray(int32[6])).'
    )
  assert len(grid['rows']) == 12
  assert grid['losses'].shape == (12, 4, 50)


def test_four_devices_give_the_results_of_one(main_run, grid):
  workdir, done = main_run
  assert '6 members on 4 devices' in done.stderr
  _, rows = _read_results(workdir)
  assert len(rows) == len(grid['rows'])
  for got, want in zip(rows, grid['rows'], strict=True):
    for name in sweep.VALUE_COLUMNS:
      assert got[name] == str(want[name])
    for name in _SCORES:
      np.testing.assert_allclose(float(got[name]), want[name], rtol=1e-5)
  with np.load(workdir / 'losses.npz') as curves:
    np.testing.assert_allclose(curves['losses'], grid['losses'], rtol=1e-5)


@pytest.mark.parametrize('index', [1, 10])
def test_a_member_equals_its_run_alone(grid, tmp_path, index):
  values = grid['rows'][index]
  config = _grid_config()
  solo = _solo(config, values, tmp_path)
  np.testing.assert_allclose(
    grid['losses'][index], solo['losses'], rtol=1e-5, atol=1e-5
  )

  _, _, eval_key = train.run_keys(values['seed'])
  config.data.echo_step = values['echo_step']
  config.model.state_size = values['state_size']
  inputs, targets = data.make_windows(eval_key, config.data, config.mode)
  scores = evaluate.evaluate(
    train.make_model(config),
    solo['state'].params,
    inputs,
    targets,
    config.mode,
    values['echo_step'],
  )
  np.testing.assert_allclose(values['eval_loss'], scores['loss'], rtol=1e-5)
  np.testing.assert_allclose(
    values['eval_accuracy'], scores['accuracy'], rtol=1e-5
  )


def test_a_member_equals_main_py_run_alone(tmp_path):
  config = sweep_configs.get_config('tiny')
  # 2 seeds x 2 learning rates x 2 echo steps, vmapped in one program.
  config.sweep.update(
    num_seeds=2, learning_rates=(0.3, 1.0), echo_steps=(2, 3), state_sizes=(3,)
  )
  result = sweep.run(config, str(tmp_path / 'sweep'))
  base = default.get_config('tiny')
  member = {'seed': 1, 'learning_rate': 0.3, 'echo_step': 3, 'state_size': 3}
  # The vmapped fields all differ from the base run's, so the run alone
  # must take each of them from the flags.
  assert member['seed'] != base.seed
  assert member['learning_rate'] != base.train.learning_rate
  assert member['echo_step'] != base.data.echo_step
  (index,) = [
    i
    for i, row in enumerate(result['rows'])
    if all(row[name] == value for name, value in member.items())
  ]
  run_config = sweep.member_config(config, member)
  want = workdir.flatten(json.loads(run_config.to_json_best_effort()))
  have = workdir.flatten(json.loads(base.to_json_best_effort()))
  flags = [
    f'--config.{path}={value}'
    for path, value in want.items()
    if value != have[path]
  ]
  assert len(flags) == 4, flags

  run_dir = tmp_path / 'run'
  done = _main(
    '--config=configs/default.py:tiny', *flags, f'--workdir={run_dir}'
  )
  assert done.returncode == 0, done.stderr
  saved = json.loads((run_dir / 'config.json').read_text())
  assert workdir.flatten(saved) == want
  records = [r for r in metrics.read(str(run_dir)) if 'loss' in r]
  assert len(records) == 4 * 5  # 4 epochs of 50 windows, a line every 10.
  losses = result['losses'][index]
  log_every = run_config.train.log_every
  np.testing.assert_allclose(
    [r['loss'] for r in records],
    [losses[r['epoch'], r['window']] for r in records],
    atol=1e-5,
  )
  np.testing.assert_allclose(
    [r['mean_loss'] for r in records],
    [
      losses[r['epoch'], r['window'] : r['window'] + log_every].mean()
      for r in records
    ],
    atol=1e-5,
  )


def test_a_diverging_member_leaves_the_others_untouched(tmp_path):
  config = sweep_configs.get_config('tiny')
  config.train.optimizer = 'sgd'
  # A step this large overflows float32 within a few windows.
  config.sweep.update(
    num_seeds=1,
    learning_rates=(0.5, 1e38),
    state_sizes=(3,),
    modes=('reset',),
  )
  result = sweep.run(config, str(tmp_path / 'sweep'))
  healthy, blown = result['rows']
  assert blown['diverged'] and not healthy['diverged']
  assert not np.isfinite(result['losses'][1]).all()

  solo = _solo(config, healthy, tmp_path)
  assert np.isfinite(solo['losses']).all()
  np.testing.assert_allclose(
    result['losses'][0], solo['losses'], rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('num_seeds', 0, 'config.sweep.num_seeds=0 must be an integer >= 1'),
    ('learning_rates', (), 'learning_rates=() must be a non-empty tuple'),
    ('learning_rates', (0.1, -1.0), 'numbers > 0'),
    ('state_sizes', (4, 0), 'state_sizes=(4, 0) must be a non-empty'),
    ('echo_steps', (-1,), 'integers >= 0'),
    ('cells', ('lstm', 'lsmt'), "tuple of 'lstm', 'gru', 'simple'"),
    ('modes', ('both',), "tuple of 'carry', 'reset'"),
    ('heatmap', ('echo_step',), 'must be () or two of'),
  ],
)
def test_a_sweep_field_that_cannot_work_is_named(field, value, message):
  config = sweep_configs.get_config('tiny')
  config.sweep[field] = value
  with pytest.raises(validate.ConfigError, match='config.sweep') as error:
    sweep.validate(config)
  assert message in str(error.value) and '\n' not in str(error.value)


@pytest.mark.parametrize(
  'seed, num_seeds', [(2**31 - 2, 2), (-(2**31), 3), (0, 8)]
)
def test_seeds_that_fit_in_int32_are_accepted(seed, num_seeds):
  config = sweep_configs.get_config('tiny')
  config.seed = seed
  config.sweep.num_seeds = num_seeds
  sweep.validate(config)


@pytest.mark.parametrize(
  'seed, num_seeds, last',
  [(2**31 - 1, 2, 2**31), (2**31, 1, 2**31), (-(2**31) - 1, 3, 1 - 2**31)],
)
def test_seeds_past_int32_are_refused_on_one_line(seed, num_seeds, last):
  config = sweep_configs.get_config('tiny')
  config.seed = seed
  config.sweep.num_seeds = num_seeds
  with pytest.raises(validate.ConfigError) as error:
    sweep.validate(config)
  assert str(error.value) == (
    f'config.seed={seed} with config.sweep.num_seeds={num_seeds} gives '
    f'seeds {seed} to {last}, which must lie in [-2147483648, 2147483647] '
    '(seeds are int32)'
  )


def test_int32_seeds_at_the_ends_give_the_keys_of_a_run_alone():
  # A sweep passes its seeds as int32 under jit; a run alone, as a Python int.
  def keys(seed):
    return [jax.random.key_data(key) for key in train.run_keys(seed)]

  seeds = np.array(validate.SEEDS, np.int32)
  swept = jax.jit(jax.vmap(keys))(seeds)
  for index, seed in enumerate(validate.SEEDS):
    for got, want in zip(swept, keys(seed), strict=True):
      np.testing.assert_array_equal(got[index], want)


def test_a_member_that_cannot_work_is_named():
  config = sweep_configs.get_config('tiny')
  config.sweep.update(modes=('carry', 'reset'), echo_steps=(2, 8))
  with pytest.raises(validate.ConfigError) as error:
    sweep.validate(config)
  message = str(error.value)
  assert message.startswith('config.data.echo_step=8 must be <')
  assert "mode='reset'" in message and 'echo_step=8' in message


def test_main_names_a_bad_sweep_field_before_compiling(tmp_path):
  done = _main(
    '--config=configs/sweep.py:tiny',
    '--config.sweep.num_seeds=0',
    f'--workdir={tmp_path / "sweep"}',
  )
  assert done.returncode != 0 and 'Traceback' not in done.stderr
  line = done.stderr.strip().splitlines()[-1]
  assert line == 'error: config.sweep.num_seeds=0 must be an integer >= 1'
  assert not (tmp_path / 'sweep').exists()


def test_a_sweep_never_writes_into_a_run(tmp_path):
  (tmp_path / 'config.json').write_text('{"seed": 0}\n')
  with pytest.raises(FileExistsError, match='already holds a sweep or a run'):
    sweep.run(sweep_configs.get_config('tiny'), str(tmp_path))
  assert (tmp_path / 'config.json').read_text() == '{"seed": 0}\n'
  assert sorted(os.listdir(tmp_path)) == ['.lock', 'config.json']


def test_a_sweep_is_refused_a_workdir_in_use(tmp_path):
  with workdir.lock(str(tmp_path)):
    with pytest.raises(workdir.WorkdirError, match='in use by another run'):
      sweep.run(sweep_configs.get_config('tiny'), str(tmp_path))
    assert os.listdir(tmp_path) == ['.lock']  # Only the holder's lock.
  assert os.listdir(tmp_path) == []  # Which goes with the holder.


def test_heatmap_text_is_dark_on_light_cells_and_light_on_dark():
  viridis = colormaps['viridis']
  assert sweep_plot.text_color(viridis(1.0)) == 'black'  # Yellow.
  assert sweep_plot.text_color(viridis(0.8)) == 'black'  # Light green.
  assert sweep_plot.text_color(viridis(0.2)) == 'white'  # Blue-purple.
  assert sweep_plot.text_color(viridis(0.0)) == 'white'  # Dark purple.
  # A cell without a value is transparent over the white figure.
  assert sweep_plot.text_color((0.0, 0.0, 0.0, 0.0)) == 'black'
