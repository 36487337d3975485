"""Ctrl-C and SIGTERM as a request to stop between chunks, not in the middle.

A signal only sets a flag; the training loop checks it after each chunk,
saves a checkpoint and returns. The handlers the process had before come back
at the first signal, so a second Ctrl-C stops at once (losing what was trained
since the last checkpoint).
"""

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
  """Context manager that turns SIGINT and SIGTERM into `requested`.

  Signal handlers can only be set in the main thread; elsewhere this does
  nothing and the signals keep their usual effect.
  """

  def __init__(self):
    self.signal = None
    self._previous = {}

  @property
  def requested(self):
    return self.signal is not None

  @property
  def name(self):
    """'SIGINT' or 'SIGTERM' once one was received, else None."""
    return signal.Signals(self.signal).name if self.signal else None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for number in SIGNALS:
        self._previous[number] = signal.signal(number, self._handle)
    return self

  def __exit__(self, *exception):
    self._restore()

  def _handle(self, number, frame):
    del frame
    self.signal = number
    self._restore()

  def _restore(self):
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous = {}
