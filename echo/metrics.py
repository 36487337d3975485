"""A run's metrics: JSON lines in metrics.jsonl and TensorBoard event files.

Each record is one JSON object on its own line of WORKDIR/metrics.jsonl. The
fields named in `TENSORBOARD_TAGS` also go, at the record's `step`, to
TensorBoard event files in WORKDIR (tensorboardX; TensorFlow is not needed):

  tensorboard --logdir runs
"""

import json
import os

import tensorboardX
from absl import logging

# Record field -> TensorBoard tag.
TENSORBOARD_TAGS = {
  'loss': 'train/loss',
  'mean_loss': 'train/mean_loss',
  'eval_loss': 'eval/loss',
  'eval_accuracy': 'eval/accuracy',
}


def metrics_path(workdir):
  return os.path.join(workdir, 'metrics.jsonl')


def read(workdir):
  """Every record of WORKDIR/metrics.jsonl, in order; [] if there is none."""
  path = metrics_path(workdir)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _keep_first_lines(path, count):
  """Cuts the file at `path` back to its first `count` lines; returns them."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.readlines()
  # A line cut short by a killed process has no newline and is dropped.
  whole = [line for line in lines if line.endswith('\n')]
  if len(whole) < count:
    logging.warning(
      '%s has %d lines, fewer than the %d its checkpoint recorded',
      path,
      len(whole),
      count,
    )
  kept = whole[:count]
  if len(kept) < len(lines):
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)
  return [json.loads(line) for line in kept]


class MetricsWriter:
  """Appends records to metrics.jsonl and to TensorBoard; a context manager.

  A resumed run first drops what was logged after the checkpoint it goes on
  from, so that the windows trained again are not logged twice.

  Args:
    workdir: the run's folder.
    keep_lines: lines of an existing metrics.jsonl to keep (the checkpoint's
      `metrics_lines`); later ones are deleted.
    resume_step: the step the run goes on from, 0 for a new run. TensorBoard
      hides events at or past it from the earlier event files (its
      `purge_step`), so kept records at that step are written again. Those
      files still hold the hidden events, and a reader that does not honour
      the purge sees them twice; metrics.jsonl has each record once.
  """

  def __init__(self, workdir, keep_lines=0, resume_step=0):
    self.path = metrics_path(workdir)
    kept = _keep_first_lines(self.path, keep_lines)
    self.lines = len(kept)
    self._file = open(self.path, 'a')
    # The event file is named by the second it is opened in, and a second
    # writer of the same name would overwrite it; the step tells them apart.
    self._summary = tensorboardX.SummaryWriter(
      workdir, purge_step=resume_step, filename_suffix=f'.step{resume_step}'
    )
    for record in kept:
      if record['step'] >= resume_step:
        self._add_scalars(record)

  def __enter__(self):
    return self

  def __exit__(self, *exception):
    self.close()

  def write(self, record):
    """Appends `record`, a dict with an int `step`, to both outputs."""
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    self.lines += 1
    self._add_scalars(record)

  def flush(self):
    self._summary.flush()

  def close(self):
    self._file.close()
    self._summary.close()

  def _add_scalars(self, record):
    for field, tag in TENSORBOARD_TAGS.items():
      if field in record:
        self._summary.add_scalar(tag, record[field], record['step'])
