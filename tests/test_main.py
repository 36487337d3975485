"""main.py as a user runs it: a subprocess with flags."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, metric_records

from echo import data, train


def _main(*args, env=None):
  return subprocess.run(
    [sys.executable, 'main.py', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=None if env is None else {**os.environ, **env},
  )


def _signal_main(signum, stderr, ready, *args, settle=0.0):
  """Starts main.py with `args`, sends `signum` once `ready()` holds (and
  `settle` seconds more), and checks that it exits as ended by that signal.

  Its standard error goes to the file `stderr`.
  """
  with open(stderr, 'w') as log:
    process = subprocess.Popen(
      [sys.executable, 'main.py', *args],
      cwd=ROOT,
      stdout=subprocess.DEVNULL,
      stderr=log,
    )
    try:
      deadline = time.monotonic() + 240  # Against a hang; not a measurement.
      while not ready():
        assert process.poll() is None, stderr.read_text()
        assert time.monotonic() < deadline, 'not ready within 240 s'
        time.sleep(0.05)
      time.sleep(settle)
      process.send_signal(signum)
      assert process.wait(timeout=240) == 128 + signum
    finally:
      process.kill()


def test_tiny_run_writes_config_and_metrics_with_the_override(tmp_path):
  workdir = tmp_path / 'run'
  done = _main(
    '--config=configs/default.py:tiny',
    '--config.train.learning_rate=0.25',
    f'--workdir={workdir}',
  )
  assert done.returncode == 0, done.stderr
  config = json.loads((workdir / 'config.json').read_text())
  assert config['train']['learning_rate'] == 0.25
  assert config['data']['series_length'] == 1_600  # The tiny preset.
  lines = [
    json.loads(line)
    for line in (workdir / 'metrics.jsonl').read_text().splitlines()
  ]
  records = [r for r in lines if 'loss' in r]
  assert len(records) == 4 * 5  # 4 epochs, 50 windows, a line every 10.
  for key in ('epoch', 'window', 'step', 'loss', 'windows_per_sec'):
    assert key in records[0]
  assert {r['learning_rate'] for r in records} == {0.25}
  assert [r['step'] for r in records] == list(range(0, 200, 10))
  evaluations = [r for r in lines if 'eval_loss' in r]
  assert [r['step'] for r in evaluations] == [50, 100, 150, 200]
  assert 'New data, epoch 3' in done.stderr
  assert re.search(
    r'Step 40 Batch loss \S+ \(\d+ windows/s, \d+:\d\d:\d\d left\)', done.stderr
  )
  assert 'Evaluation after epoch 3: loss' in done.stderr


def _error_line(done):
  assert done.returncode != 0
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert 'Traceback' not in done.stderr
  return lines[-1]


def test_a_mistyped_field_is_named_on_one_line(tmp_path):
  done = _main(
    '--config=configs/default.py:tiny',
    '--config.train.learnig_rate=0.1',
    f'--workdir={tmp_path / "run"}',
  )
  line = _error_line(done)
  assert 'config.train.learnig_rate' in line and 'learning_rate' in line
  assert not (tmp_path / 'run').exists()


def test_a_bad_value_is_named_on_one_line(tmp_path):
  done = _main(
    '--config=configs/default.py:notebook',
    '--config.data.echo_step=10',
    f'--workdir={tmp_path / "run"}',
  )
  line = _error_line(done)
  assert line.startswith('error: config.data.echo_step=10 must be <')
  assert not (tmp_path / 'run').exists()


def test_an_unknown_preset_is_named_on_one_line():
  line = _error_line(_main('--config=configs/default.py:huge'))
  assert "unknown preset 'huge'" in line


def test_the_default_workdir_is_made_under_runs(tmp_path):
  env = dict(os.environ)
  done = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, 'main.py'),
      f'--config={os.path.join(ROOT, "configs/default.py")}:tiny',
      '--config.num_epochs=1',
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr
  (run,) = (tmp_path / 'runs').iterdir()
  assert (run / 'metrics.jsonl').exists() and (run / 'config.json').exists()


def test_a_second_run_compiles_nothing(tmp_path):
  cache = tmp_path / 'cache'
  args = (
    '--config=configs/default.py:tiny',
    '--config.num_epochs=1',
    f'--config.compile_cache_dir={cache}',
  )
  # JAX logs a line for every program it compiles.
  logged = {'JAX_LOG_COMPILES': '1'}
  first = _main(*args, f'--workdir={tmp_path / "first"}', env=logged)
  assert first.returncode == 0, first.stderr
  assert 'Compiling jit(' in first.stderr
  entries = sorted(p.name for p in cache.rglob('*') if p.is_file())
  assert len(entries) >= 4  # Start, epoch windows, chunk, evaluation.
  second = _main(*args, f'--workdir={tmp_path / "second"}', env=logged)
  assert second.returncode == 0, second.stderr
  assert 'Compiling' not in second.stderr
  assert sorted(p.name for p in cache.rglob('*') if p.is_file()) == entries
  assert len(metric_records(str(tmp_path / 'second'), 'loss')) == 5


def test_sigterm_saves_the_last_chunk_and_the_printed_command_resumes(
  tiny, tmp_path
):
  workdir = tmp_path / 'run'
  metrics = workdir / 'metrics.jsonl'
  stderr = tmp_path / 'stderr.txt'
  # So many epochs that the run is still training when the signal comes.
  _signal_main(
    signal.SIGTERM,
    stderr,
    lambda: metrics.exists() and metrics.read_text().count('\n') >= 3,
    '--config=configs/default.py:tiny',
    '--config.num_epochs=100000',
    # No checkpoint falls due before the end: the stop must save its own.
    '--config.checkpoint.every_chunks=1000000',
    f'--workdir={workdir}',
  )

  line = stderr.read_text().strip().splitlines()[-1]
  stopped = re.match(r'Stopped by SIGTERM at epoch (\d+), window (\d+)', line)
  assert stopped, line
  epoch, window = int(stopped[1]), int(stopped[2])
  windows_per_epoch = data.num_windows(tiny.data)
  saved = os.listdir(workdir / 'checkpoints')
  assert saved == [str(epoch * windows_per_epoch + window)]
  command = shlex.split(line.split('resume with: ')[1])
  assert command[:2] == ['python', 'main.py']
  assert f'--workdir={workdir}' in command
  # Resume, and end one epoch after the stop instead of after 100000.
  num_epochs = epoch + 1
  done = _main(*command[2:], f'--config.num_epochs={num_epochs}')
  assert done.returncode == 0, done.stderr
  assert f'Resuming at epoch {epoch}, window {window} ' in done.stderr

  tiny.num_epochs = num_epochs
  reference = tmp_path / 'reference'
  train.train_and_evaluate(tiny, str(reference))
  for field in ('loss', 'mean_loss', 'eval_loss'):
    got = metric_records(str(workdir), field)
    want = metric_records(str(reference), field)
    assert [step for step, _ in got] == [step for step, _ in want]
    np.testing.assert_allclose(
      [value for _, value in got], [value for _, value in want], atol=1e-6
    )


def test_a_diverging_run_says_where_and_what_to_try(tmp_path):
  workdir = tmp_path / 'run'
  done = _main(
    '--config=configs/default.py:tiny',
    '--config.train.optimizer=sgd',
    '--config.train.learning_rate=1e37',
    f'--workdir={workdir}',
  )
  line = _error_line(done)
  assert re.match(
    r'error: loss (nan|inf) at epoch 0, window \d+ \(step \d+\)', line
  ), line
  assert line.endswith(
    '--config.train.optimizer=sgd --config.train.learning_rate=1e+36 '
    f'--workdir={workdir} --fresh'
  )
  losses = [loss for _, loss in metric_records(str(workdir), 'loss')]
  assert np.isfinite(losses).all()


# Importing main.py defines its --config flag, which makes ml_collections load
# the config file with a deprecated importlib call.
@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
def test_the_printed_commands_replace_flags_in_any_spelling(monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['main.py'])
  import main

  command = main._command(
    [
      'main.py',
      '--config=configs/default.py:tiny',
      '--workdir',
      'runs/old',
      '--nofresh',
      '--config.train.learning_rate',
      '0.5',
      '--config.seed=3',
    ],
    drop=('workdir', 'fresh', 'config.train.learning_rate'),
    add=('--workdir=runs/my run',),
  )
  assert command == (
    'python main.py --config=configs/default.py:tiny --config.seed=3 '
    "'--workdir=runs/my run'"
  )


@pytest.mark.parametrize('number', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_sweep_at_once_with_one_line(tmp_path, number):
  workdir = tmp_path / 'sweep'
  stderr = tmp_path / 'stderr.txt'
  # config.json is written just before the first program compiles; the
  # signal comes while it compiles or trains, in XLA's own threads.
  _signal_main(
    number,
    stderr,
    lambda: (workdir / 'config.json').exists(),
    '--config=configs/sweep.py',
    f'--workdir={workdir}',
    settle=1.0,
  )
  text = stderr.read_text()
  assert 'Fatal Python error' not in text and 'Traceback' not in text
  assert text.strip().splitlines()[-1] == (
    f'Stopped by {signal.Signals(number).name} at once; {workdir} keeps what '
    'the sweep wrote before; start it again with --fresh, which moves it '
    'aside'
  )
