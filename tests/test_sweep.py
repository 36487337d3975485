"""Sweeps: the grid's outputs, one trace per combination, members that equal
their runs alone, diverging members kept apart, and sharding over devices."""

import csv
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT

from configs import sweep as sweep_configs
from echo import data, evaluate, sweep, train, validate, workdir

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


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
  """The grid run in this process, on its one CPU device."""
  assert len(jax.devices()) == 1
  return sweep.run(_grid_config(), str(tmp_path_factory.mktemp('grid')))


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


def test_each_combination_traces_its_program_once(grid):
  assert grid['traces'] == [1, 1]
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
  assert os.listdir(tmp_path) == ['.lock']
