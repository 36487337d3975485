"""main.py as a user runs it: a subprocess with flags."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def _main(*args):
  return subprocess.run(
    [sys.executable, 'main.py', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


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
  records = [
    json.loads(line)
    for line in (workdir / 'metrics.jsonl').read_text().splitlines()
  ]
  assert len(records) == 4 * 5  # 4 epochs, 50 windows, a line every 10.
  for key in ('epoch', 'window', 'step', 'loss', 'windows_per_sec'):
    assert key in records[0]
  assert {r['learning_rate'] for r in records} == {0.25}
  assert [r['step'] for r in records] == list(range(0, 200, 10))
  assert 'New data, epoch 3' in done.stderr
  assert 'Step 40 Batch loss' in done.stderr


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
  first = _main(*args, f'--workdir={tmp_path / "first"}')
  assert first.returncode == 0, first.stderr
  entries = sorted(p.name for p in cache.rglob('*') if p.is_file())
  assert len(entries) >= 3  # Keys, initial state, data, chunk.
  second = _main(*args, f'--workdir={tmp_path / "second"}')
  assert second.returncode == 0, second.stderr
  # Every program came from the cache: a compile would have added an entry.
  assert sorted(p.name for p in cache.rglob('*') if p.is_file()) == entries
  assert (tmp_path / 'second' / 'metrics.jsonl').read_text().count('\n') == 5
