"""Training speed of the default config, beside the PyTorch reference.

  python benchmarks/throughput.py [--repeats=3] [--torch_python=PATH]

Prints one table of medians over `--repeats` fresh processes, with the
spread (min-max):

  steady us/window   one window's forward, backward and update, compile
                     excluded (an epoch of 1 000 windows, timed after the
                     first chunk has run)
  compile s          first chunk's wall time minus its steady share
  first window s     from the end of `import` to the first window done,
                     with the compilation cache warm (a second run)
  whole process s    `python main.py --config=configs/default.py`, start to
                     exit, compilation cache warm; and cold (empty cache)

The PyTorch reference (seed_torch.py, from the project's anchors folder
`../shared/anchors` or --anchors) runs in the same invocation when a Python
with torch is found (--torch_python, or $ECHO_TORCH_PYTHON); so does the
hand-written C loop (floor.c, same folder) when gcc can build it. Where one
cannot run, the table says why.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_REPEATS = flags.DEFINE_integer('repeats', 3, 'Fresh processes per figure.')
_TORCH = flags.DEFINE_string(
  'torch_python',
  os.environ.get('ECHO_TORCH_PYTHON'),
  'A Python interpreter with torch 2.13 for the reference.',
)
_ANCHORS = flags.DEFINE_string(
  'anchors',
  os.path.join(os.path.dirname(ROOT), 'shared', 'anchors'),
  'Folder holding seed_torch.py.',
)

# Runs in a fresh interpreter: times one run of the default config by chunks.
_CHILD_CODE = """
import time
started = time.perf_counter()
import json, sys
sys.path.insert(0, {root!r})
import jax
import numpy as np
from configs import default
from echo import train
imported = time.perf_counter()
config = default.get_config()
config.compile_cache_dir = {cache!r}
train.use_cpu_threads(train.cpu_threads(config))  # As main.py does.
trainer = train._Trainer(config)
state, data_key, _ = trainer.start(config.seed)
inputs, targets = trainer.epoch_windows(data_key, 0)
carries = trainer.model.initial_carries(config.data.batch_size)
state, carries, losses = trainer.train_chunk(
  state, carries, inputs, targets, 0
)
losses.block_until_ready()
first_chunk = time.perf_counter()
epochs = []
for epoch in range(3):
  inputs, targets = trainer.epoch_windows(data_key, epoch)
  jax.block_until_ready(inputs)
  begin = time.perf_counter()
  for start in range(0, trainer.windows_per_epoch, trainer.chunk):
    state, carries, losses = trainer.train_chunk(
      state, carries, inputs, targets, start
    )
  losses.block_until_ready()
  epochs.append((time.perf_counter() - begin) / trainer.windows_per_epoch)
steady = float(np.median(epochs))
print(json.dumps({{
  'import_s': imported - started,
  'first_chunk_s': first_chunk - imported,
  'steady_us': steady * 1e6,
  'chunk': trainer.chunk,
}}))
"""


def _child(cache):
  code = _CHILD_CODE.format(root=ROOT, cache=cache)
  done = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, check=True
  )
  return json.loads(done.stdout.strip().splitlines()[-1])


def _whole_process(cache):
  workdir = tempfile.mkdtemp()
  begin = time.perf_counter()
  subprocess.run(
    [
      sys.executable,
      'main.py',
      '--config=configs/default.py',
      f'--config.compile_cache_dir={cache}',
      f'--workdir={workdir}/run',
    ],
    cwd=ROOT,
    capture_output=True,
    check=True,
  )
  elapsed = time.perf_counter() - begin
  shutil.rmtree(workdir)
  return elapsed


def _torch(repeats):
  """(steady us per window list, whole-process s list) or a reason."""
  python, anchors = _TORCH.value, _ANCHORS.value
  script = os.path.join(anchors, 'seed_torch.py')
  if not python:
    return 'no --torch_python (or $ECHO_TORCH_PYTHON) given'
  if not os.path.exists(script):
    return f'{script} not found'
  steady, whole = [], []
  for _ in range(repeats):
    begin = time.perf_counter()
    done = subprocess.run(
      [python, script, '--quiet', '--carry'],
      cwd=anchors,
      capture_output=True,
      text=True,
    )
    whole.append(time.perf_counter() - begin)
    if done.returncode:
      return f'seed_torch.py failed: {done.stderr.strip().splitlines()[-1]}'
    line = done.stdout.strip().splitlines()[-1]
    steady.append(
      json.loads(line.removeprefix('RESULT '))['steady_us_per_batch']
    )
  return steady, whole


def _c_loop(repeats):
  """Steady us per window of the anchors' C loop, or why it did not run."""
  source = os.path.join(_ANCHORS.value, 'floor.c')
  if not os.path.exists(source):
    return f'{source} not found'
  if not shutil.which('gcc'):
    return 'no gcc to build floor.c'
  folder = tempfile.mkdtemp(prefix='echo-floor-')
  binary = os.path.join(folder, 'floor')
  try:
    subprocess.run(
      ['gcc', '-O3', '-march=native', '-ffast-math', '-o', binary, source]
      + ['-lm'],
      capture_output=True,
      check=True,
    )
    steady = []
    for _ in range(repeats):
      done = subprocess.run(
        [binary], capture_output=True, text=True, check=True
      )
      line = done.stdout.strip().splitlines()[-1]
      steady.append(
        json.loads(line.removeprefix('RESULT '))['steady_us_per_batch']
      )
    return steady
  except subprocess.CalledProcessError as error:
    return f'floor.c failed: {error}'
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def _figure(values, digits):
  if not values:
    return 'n/a'
  middle = statistics.median(values)
  return (
    f'{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})'
  )


def main(argv):
  del argv
  repeats = _REPEATS.value
  cache = tempfile.mkdtemp(prefix='echo-cache-')
  cold, warm, children = [], [], []
  for _ in range(repeats):
    shutil.rmtree(cache, ignore_errors=True)
    cold.append(_whole_process(cache))
    warm.append(_whole_process(cache))
    children.append(_child(cache))
  # A cold child for the compile time: the cache is emptied first.
  compiles = []
  for _ in range(repeats):
    shutil.rmtree(cache, ignore_errors=True)
    child = _child(cache)
    compiles.append(
      child['first_chunk_s'] - child['chunk'] * child['steady_us'] * 1e-6
    )
  shutil.rmtree(cache, ignore_errors=True)
  steady = [c['steady_us'] for c in children]
  first_window = [
    c['first_chunk_s'] - (c['chunk'] - 1) * c['steady_us'] * 1e-6
    for c in children
  ]
  imports = [c['import_s'] for c in children]

  torch = _torch(repeats)
  c_loop = _c_loop(repeats)
  rows = [
    ('steady us/window', steady, 1),
    ('compile s (cold cache)', compiles, 2),
    ('import s', imports, 2),
    ('first window s after import (warm)', first_window, 2),
    ('whole process s (warm cache)', warm, 2),
    ('whole process s (cold cache)', cold, 2),
  ]
  # Reference figures beside ours: {reference: {row name: values}}.
  references = {}
  if not isinstance(torch, str):
    torch_steady, torch_whole = torch
    references['PyTorch'] = {
      'steady us/window': torch_steady,
      'whole process s (warm cache)': torch_whole,
      'whole process s (cold cache)': torch_whole,
    }
  if not isinstance(c_loop, str):
    references['C loop'] = {'steady us/window': c_loop}
  print(f'echo, default config, medians of {repeats} (min-max)\n')
  header = ['figure', 'echo']
  for name in references:
    header += [name, 'ratio']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for name, values, digits in rows:
    cells = [name, _figure(values, digits)]
    for figures in references.values():
      if name not in figures:
        cells += ['', '']
        continue
      ours = statistics.median(values)
      theirs = statistics.median(figures[name])
      faster = theirs / ours
      cells += [
        _figure(figures[name], digits),
        f'{ours / theirs:.3f}x ('
        + (
          f'{faster:.1f}x faster'
          if faster >= 1
          else f'{1 / faster:.1f}x slower'
        )
        + ')',
      ]
    print('| ' + ' | '.join(cells) + ' |')
  for name, reason in (('PyTorch reference', torch), ('C loop', c_loop)):
    if isinstance(reason, str):
      print(f'\n{name} not run: {reason}')


if __name__ == '__main__':
  app.run(main)
