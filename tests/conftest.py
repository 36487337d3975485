"""Shared fixtures and readers: the tiny config, one finished tiny run, and
the repository root."""

import os
import shutil
import struct
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default  # noqa: E402
from echo import train  # noqa: E402


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """Keeps the tests' compiled programs in a cache of their own, shared by
  every run in this process and in the main.py subprocesses (the default
  compile_cache_dir is under $XDG_CACHE_HOME), so that runs of the same
  config compile once."""
  os.environ['XDG_CACHE_HOME'] = str(tmp_path_factory.mktemp('cache'))


@pytest.fixture
def tiny():
  """A fresh tiny config (trains in well under a second after compiling)."""
  return default.get_config('tiny')


def finished_config():
  """The tiny config of `finished`: a checkpoint every 3 chunks, all kept."""
  config = default.get_config('tiny')
  config.checkpoint.every_chunks = 3
  config.checkpoint.keep = 10
  return config


@pytest.fixture(scope='session')
def finished(tmp_path_factory):
  """A tiny run trained to the end without a stop, shared by the tests.

  Tests must not change its workdir; `copy_to` makes a copy to work on.
  Returns a dict with `workdir` and `result` (what train_and_evaluate gave).
  """
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  result = train.train_and_evaluate(finished_config(), workdir)

  def copy_to(path):
    shutil.copytree(workdir, path)
    return str(path)

  return {'workdir': workdir, 'result': result, 'copy_to': copy_to}


def read_events(workdir):
  """The scalars of the TensorBoard event files in `workdir`.

  Files are read in name (time) order and, as TensorBoard does, a file that
  starts a session at step S hides what earlier files logged at or past S.

  Returns:
    {tag: [(step, value), ...]} in the order they were logged.
  """
  from tensorboardX.proto import event_pb2

  scalars = {}
  names = sorted(n for n in os.listdir(workdir) if 'tfevents' in n)
  for name in names:
    for event in _records(os.path.join(workdir, name), event_pb2.Event):
      if event.session_log.status == event_pb2.SessionLog.START:
        for tag, values in scalars.items():
          scalars[tag] = [(s, v) for s, v in values if s < event.step]
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(
          (event.step, value.simple_value)
        )
  return scalars


def _records(path, message):
  """The protos of a TFRecord file: length, its CRC, data, the data's CRC."""
  with open(path, 'rb') as f:
    while header := f.read(12):
      (length,) = struct.unpack('<Q', header[:8])
      yield message.FromString(f.read(length))
      f.read(4)


def metric_records(workdir, field):
  """(step, value of `field`) of every metrics.jsonl record that has it."""
  from echo import metrics

  return [(r['step'], r[field]) for r in metrics.read(workdir) if field in r]
