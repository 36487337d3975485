"""Checkpoints and resuming: a resumed run repeats an uninterrupted one."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import finished_config, metric_records, read_events

from echo import checkpoint, train, workdir


def _assert_same_curves(workdir, reference):
  for field in ('loss', 'mean_loss', 'eval_loss', 'eval_accuracy'):
    got = metric_records(workdir, field)
    want = metric_records(reference, field)
    assert [step for step, _ in got] == [step for step, _ in want], field
    np.testing.assert_allclose(
      [value for _, value in got], [value for _, value in want], atol=1e-6
    )


def _files(run):
  """{path relative to `run`: bytes} of every file in `run`."""
  found = {}
  for folder, _, names in os.walk(run):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, run)] = f.read()
  return found


def test_a_run_killed_after_a_checkpoint_goes_on_as_if_never_stopped(
  finished, tmp_path
):
  # A run killed after window 89 has saved steps 30 and 60 and logged more:
  # the same files as the finished run without its later checkpoints.
  run = finished['copy_to'](tmp_path / 'run')
  saves = os.path.join(run, 'checkpoints')
  for step in os.listdir(saves):
    if int(step) > 60:
      shutil.rmtree(os.path.join(saves, step))

  result = train.train_and_evaluate(finished_config(), run)

  # Step 60 is window 10 of epoch 1: mid-epoch, so the carries matter.
  losses = result['losses']
  assert np.isnan(losses[0]).all() and np.isnan(losses[1, :10]).all()
  np.testing.assert_allclose(
    losses[1, 10:], finished['result']['losses'][1, 10:], atol=1e-6
  )
  assert result['traces'] == 1
  # metrics.jsonl lost the lines logged after step 60 and has them once.
  _assert_same_curves(run, finished['workdir'])
  events = read_events(run)
  for tag, field in (('train/loss', 'loss'), ('eval/loss', 'eval_loss')):
    steps = [step for step, _ in events[tag]]
    assert steps == [step for step, _ in metric_records(run, field)], tag


def test_more_epochs_extend_a_finished_run(finished, tmp_path):
  config = finished_config()
  config.num_epochs = 2
  run = str(tmp_path / 'run')
  train.train_and_evaluate(config, run)

  config.num_epochs = 4
  result = train.train_and_evaluate(config, run)
  assert result['progress'].step == 200
  assert np.isnan(result['losses'][:2]).all()
  _assert_same_curves(run, finished['workdir'])


@pytest.mark.parametrize('num_epochs', [4, 2])
def test_a_complete_run_is_not_trained_again(finished, tmp_path, num_epochs):
  run = finished['copy_to'](tmp_path / 'run')
  before = _files(run)
  config = finished_config()
  config.num_epochs = num_epochs  # 2: fewer than it holds, still untouched.
  result = train.train_and_evaluate(config, run)
  assert result['progress'].epoch == 4 and result['stopped_by'] is None
  assert result['traces'] == 0 and np.isnan(result['losses']).all()
  assert _files(run) == before


def test_a_different_config_is_refused_with_the_fields_listed(
  finished, tmp_path
):
  run = finished['copy_to'](tmp_path / 'run')
  before = open(os.path.join(run, 'metrics.jsonl')).read()
  config = finished_config()
  config.model.state_size = 8
  config.seed = 1
  config.num_epochs = 9  # May differ: it only extends the run.
  with pytest.raises(workdir.WorkdirError) as error:
    train.train_and_evaluate(config, run)
  message = str(error.value)
  assert 'model.state_size saved 4, requested 8' in message
  assert 'seed saved 0, requested 1' in message
  assert 'num_epochs' not in message and '--fresh' in message
  assert open(os.path.join(run, 'metrics.jsonl')).read() == before


def test_which_fields_may_differ():
  saved = finished_config().to_dict()
  requested = finished_config()
  requested.num_epochs = 10
  requested.checkpoint.keep = 1
  requested.train.log_every = 5
  requested.compile_cache_dir = ''
  requested.cpu_threads = 2
  refused, allowed = workdir.config_changes(saved, requested.to_dict())
  assert refused == [('train.log_every', 10, 5)]
  assert [field for field, _, _ in allowed] == [
    'checkpoint.keep',
    'compile_cache_dir',
    'cpu_threads',
    'num_epochs',
  ]


def _target(config):
  return train._Trainer(config).checkpoint_target()


@pytest.mark.parametrize(
  'field, value, leaf',
  [
    ('model.state_size', 8, 'state.params.head.kernel: saved float32[4, 2]'),
    ('model.num_layers', 3, 'expected float32[16]'),
    ('model.cell', 'gru', 'state.params.rnn.layer_0.candidate'),
  ],
)
def test_a_checkpoint_that_does_not_fit_is_an_error_not_a_partial_load(
  finished, field, value, leaf
):
  config = finished_config()
  section, name = field.split('.')
  config[section][name] = value
  directory = os.path.join(finished['workdir'], 'checkpoints')
  with checkpoint.Checkpoints(directory, keep=10) as saves:
    with pytest.raises(checkpoint.CheckpointMismatch) as error:
      saves.restore(_target(config))
  assert leaf in str(error.value)


@pytest.mark.parametrize('damage', ['arrays cut short', 'metadata missing'])
def test_a_damaged_checkpoint_is_named_and_an_earlier_one_resumes(
  finished, tmp_path, damage
):
  run = finished['copy_to'](tmp_path / 'run')
  saves = os.path.join(run, 'checkpoints')
  steps = sorted(int(step) for step in os.listdir(saves))
  newest = os.path.join(saves, str(steps[-1]), 'train')
  for folder, _, names in os.walk(newest):
    for name in names:
      path = os.path.join(folder, name)
      if damage == 'metadata missing' and name == '_METADATA':
        os.remove(path)
      elif damage == 'arrays cut short' and os.path.basename(folder) == 'd':
        open(path, 'w').close()
  config = finished_config()
  config.num_epochs = 5  # Unfinished, so the run reads its newest checkpoint.
  before = _files(run)

  with pytest.raises(checkpoint.CheckpointUnreadable) as error:
    train.train_and_evaluate(config, run)
  message = str(error.value)
  assert '\n' not in message
  assert f'checkpoint {steps[-1]} in {saves} cannot be read' in message
  assert f'to resume from checkpoint {steps[-2]}' in message
  assert _files(run) == before  # Nothing saved was changed or lost.

  shutil.move(os.path.join(saves, str(steps[-1])), tmp_path / 'damaged')
  config.num_epochs = 4
  result = train.train_and_evaluate(config, run)
  assert result['progress'].step == steps[-1]
  _assert_same_curves(run, finished['workdir'])


def test_a_config_json_that_lies_still_cannot_load_another_shape(
  finished, tmp_path
):
  run = finished['copy_to'](tmp_path / 'run')
  config = finished_config()
  config.model.state_size = 8
  with open(workdir.config_path(run), 'w') as f:
    f.write(config.to_json_best_effort())
  with pytest.raises(checkpoint.CheckpointMismatch, match='state.params'):
    train.train_and_evaluate(config, run)


def test_restoring_gives_back_what_was_saved(finished):
  directory = os.path.join(finished['workdir'], 'checkpoints')
  with checkpoint.Checkpoints(directory, keep=10) as saves:
    assert saves.latest_step() == 200
    restored, progress = saves.restore(_target(finished_config()))
  assert progress == checkpoint.Progress(4, 0, 200, 24)
  state = finished['result']['state']
  for got, want in zip(
    jax.tree.leaves(restored['state']), jax.tree.leaves(state), strict=True
  ):
    np.testing.assert_array_equal(got, want)
  _, data_key, _ = train.run_keys(0)
  np.testing.assert_array_equal(
    restored['data_key'], jax.random.key_data(data_key)
  )


def _poisoned_config(monkeypatch, poison):
  """The `finished` config, whose chunks end with `poison(state, losses)`.

  Returns the config, with saved programs off: a saved program of this
  config would not be poisoned.
  """
  original = train._Trainer._train_chunk

  def poisoned(self, state, carries, inputs, targets, start):
    state, carries, losses = original(
      self, state, carries, inputs, targets, start
    )
    state, losses = poison(state, losses)
    return state, carries, losses

  monkeypatch.setattr(train._Trainer, '_train_chunk', poisoned)
  config = finished_config()
  config.compile_cache_dir = ''
  return config


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
  monkeypatch, tmp_path
):
  def poison(state, losses):
    # From window 75 of the run on, the loss and parameters turn to NaN.
    windows = state.step - losses.shape[0] + jnp.arange(losses.shape[0])
    losses = jnp.where(windows >= 75, jnp.nan, losses)
    params = jax.tree.map(
      lambda p: jnp.where(windows[-1] >= 75, jnp.nan, p), state.params
    )
    return state.replace(params=params), losses

  config = _poisoned_config(monkeypatch, poison)
  run = str(tmp_path / 'run')
  with pytest.raises(train.Diverged) as error:
    train.train_and_evaluate(config, run)

  diverged = error.value
  assert (diverged.epoch, diverged.window, diverged.step) == (1, 25, 75)
  assert diverged.checkpoint_step == 60
  assert 'config.train.learning_rate=0.5' in str(diverged)
  directory = os.path.join(run, 'checkpoints')
  with checkpoint.Checkpoints(directory, keep=10) as saves:
    assert saves.latest_step() == 60
    restored, _ = saves.restore(_target(config))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))
  losses = [loss for _, loss in metric_records(run, 'loss')]
  assert np.isfinite(losses).all() and len(losses) == 7


def test_an_update_that_leaves_the_state_not_finite_is_never_saved(
  monkeypatch, tmp_path
):
  def poison(state, losses):
    # The update of window 59 makes the parameters infinite; every loss,
    # taken before its window's update, stays finite.
    params = jax.tree.map(
      lambda p: jnp.where(state.step == 60, jnp.inf, p), state.params
    )
    return state.replace(params=params), losses

  config = _poisoned_config(monkeypatch, poison)  # A checkpoint every 30.
  run = str(tmp_path / 'run')
  with pytest.raises(train.Diverged) as error:
    train.train_and_evaluate(config, run)
  diverged = error.value
  assert (diverged.epoch, diverged.window, diverged.step) == (1, 9, 59)
  assert diverged.checkpoint_step == 30
  assert 'parameters or optimizer state not finite' in str(diverged)
  assert os.listdir(os.path.join(run, 'checkpoints')) == ['30']


def test_moving_a_run_aside_keeps_it(tmp_path):
  run = tmp_path / 'run'
  assert workdir.move_aside(str(run)) is None
  run.mkdir()
  (run / 'metrics.jsonl').write_text('{"step": 0}\n')
  first = workdir.move_aside(str(run))
  run.mkdir()
  (run / 'metrics.jsonl').write_text('{"step": 1}\n')
  second = workdir.move_aside(str(run))
  assert first != second and not run.exists()
  assert open(os.path.join(first, 'metrics.jsonl')).read() == '{"step": 0}\n'
  assert open(os.path.join(second, 'metrics.jsonl')).read() == '{"step": 1}\n'


def test_a_folder_that_holds_no_run_is_neither_moved_nor_written(
  tiny, tmp_path
):
  folder = tmp_path / 'notes'
  folder.mkdir()
  (folder / 'notes.txt').write_text('mine')
  assert workdir.move_aside(str(folder)) is None
  with pytest.raises(workdir.WorkdirError, match=r'holds files but no run'):
    train.train_and_evaluate(tiny, str(folder))
  assert os.listdir(folder) == ['notes.txt']
  assert (folder / 'notes.txt').read_text() == 'mine'


@pytest.mark.parametrize(
  'saved, message',
  [
    ('', r'config.json cannot be read as a config'),
    ('[1, 2]', r'config.json cannot be read as a config \(not an object\)'),
    ('null', r'config.json cannot be read as a config \(not an object\)'),
    ('{"sweep": {"num_seeds": 4}}', r'holds a sweep, not a run'),
  ],
)
def test_a_config_json_of_no_run_is_refused_and_kept(
  tiny, tmp_path, saved, message
):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(saved)
  with pytest.raises(workdir.WorkdirError, match=message) as error:
    train.train_and_evaluate(tiny, str(run))
  assert '--fresh' in str(error.value)
  assert (run / 'config.json').read_text() == saved


def test_a_workdir_that_is_a_file_is_named(tiny, tmp_path):
  path = tmp_path / 'file'
  path.write_text('mine')
  with pytest.raises(workdir.WorkdirError, match=f'--workdir={path} is a file'):
    train.train_and_evaluate(tiny, str(path))
  assert path.read_text() == 'mine'


def test_only_the_newest_checkpoints_are_kept(tiny, tmp_path):
  tiny.num_epochs = 2
  tiny.checkpoint.every_chunks = 2
  tiny.checkpoint.keep = 2
  run = tmp_path / 'run'
  train.train_and_evaluate(tiny, str(run))
  # 100 windows in chunks of 10: saved every 20 windows, the last 2 kept.
  kept = sorted(int(step) for step in os.listdir(run / 'checkpoints'))
  assert kept == [80, 100]


def test_a_lock_leaves_no_trace_where_no_run_started(tmp_path):
  path = tmp_path / 'new'
  with workdir.lock(str(path)):
    assert os.listdir(path) == ['.lock']
  assert not path.exists()
  with workdir.lock(str(path)):
    (path / 'config.json').write_text('{}')
  assert sorted(os.listdir(path)) == ['.lock', 'config.json']


def test_a_workdir_in_use_is_refused_and_not_moved(tiny, tmp_path):
  path = str(tmp_path / 'run')
  with workdir.lock(path):
    with pytest.raises(workdir.WorkdirError, match='in use by another run'):
      train.train_and_evaluate(tiny, path)
    (tmp_path / 'run' / 'config.json').write_text('{}')
    with pytest.raises(workdir.WorkdirError, match='in use by another run'):
      workdir.move_aside(path)
  assert (tmp_path / 'run' / 'config.json').read_text() == '{}'
  assert workdir.move_aside(path)  # Once free, it moves.


def test_default_workdirs_are_never_shared(tmp_path):
  parent = str(tmp_path / 'runs')
  names = {workdir.new_default(parent) for _ in range(3)}
  assert len(names) == 3
  assert all(os.path.isdir(name) for name in names)
