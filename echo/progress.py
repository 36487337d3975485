"""Speed and time left of a run, for its progress lines."""

import datetime
import time


def format_duration(seconds):
  """Seconds as H:MM:SS, e.g. 0:01:05; None (not known yet) as ?:??:??."""
  if seconds is None:
    return '?:??:??'
  return str(datetime.timedelta(seconds=round(seconds)))


class Pace:
  """Windows per second between progress lines, and the time the run has left.

  The first chunk of a run includes compiling, so the time left is projected
  from the chunks after it, with whatever else runs between chunks
  (evaluation, checkpoints) included; until then it is not known (None).

  Args:
    windows_left: windows this process still has to train.
  """

  def __init__(self, windows_left):
    self._left = windows_left
    self._lap = time.perf_counter()
    self._after_first = None  # (time, windows left) when chunk 1 was done.

  def lap(self):
    """Restarts the clock of windows/s, e.g. after drawing an epoch's data."""
    self._lap = time.perf_counter()

  def chunk_done(self, windows):
    """Counts `windows` as trained; returns (windows/s, seconds left)."""
    now = time.perf_counter()
    windows_per_sec = windows / max(now - self._lap, 1e-9)
    self._lap = now
    self._left -= windows
    if not self._left:
      return windows_per_sec, 0.0
    if self._after_first is None:
      self._after_first = now, self._left
      return windows_per_sec, None
    since, left_then = self._after_first
    return windows_per_sec, self._left * (now - since) / (
      left_then - self._left
    )
