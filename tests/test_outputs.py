"""What a finished run leaves in its workdir: evaluations, TensorBoard event
files and pictures."""

import os
import struct

import numpy as np
import pytest
from conftest import metric_records, read_events

from echo import progress


def test_every_epoch_is_evaluated_once_by_one_compiled_function(finished):
  evaluations = metric_records(finished['workdir'], 'eval_accuracy')
  assert [step for step, _ in evaluations] == [50, 100, 150, 200]
  assert finished['result']['eval_traces'] == 1
  # The tiny run learns the echo of a series it never trained on.
  assert evaluations[-1][1] > 0.9 > evaluations[0][1]
  eval_losses = [
    loss for _, loss in metric_records(finished['workdir'], 'eval_loss')
  ]
  assert eval_losses[-1] < 0.3 < eval_losses[0]


@pytest.mark.parametrize(
  'tag, field',
  [
    ('train/loss', 'loss'),
    ('train/mean_loss', 'mean_loss'),
    ('eval/loss', 'eval_loss'),
    ('eval/accuracy', 'eval_accuracy'),
  ],
)
def test_tensorboard_holds_the_metrics(finished, tag, field):
  events = read_events(finished['workdir'])[tag]
  records = metric_records(finished['workdir'], field)
  assert [step for step, _ in events] == [step for step, _ in records]
  np.testing.assert_allclose(
    [value for _, value in events], [value for _, value in records], rtol=1e-6
  )


def _png_size(path):
  with open(path, 'rb') as f:
    header = f.read(24)
  assert header[:8] == b'\x89PNG\r\n\x1a\n' and header[12:16] == b'IHDR'
  return struct.unpack('>II', header[16:24])


@pytest.mark.parametrize('name', ['loss.png', 'echo.png'])
def test_pictures_are_pngs_of_a_sensible_size(finished, name):
  width, height = _png_size(os.path.join(finished['workdir'], name))
  assert 600 <= width <= 2000 and 300 <= height <= 1500
  assert width > height


def test_time_left_reads_as_hours_minutes_seconds():
  assert progress.format_duration(0.4) == '0:00:00'
  assert progress.format_duration(65) == '0:01:05'
  assert progress.format_duration(3 * 3600 + 7) == '3:00:07'
  assert progress.format_duration(None) == '?:??:??'


def test_time_left_leaves_out_the_first_chunk_which_compiles(monkeypatch):
  clock = iter([0.0, 10.0, 11.0, 13.0, 14.0])  # Chunks of 10, 1, 2, 1 s.
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: next(clock))
  pace = progress.Pace(windows_left=40)
  assert pace.chunk_done(10) == (1.0, None)
  assert pace.chunk_done(10) == (10.0, 2.0)  # 20 left at 10 windows/s.
  assert pace.chunk_done(10) == (5.0, 10 * 3 / 20)
  assert pace.chunk_done(10) == (10.0, 0.0)
