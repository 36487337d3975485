"""Checkpoints of a run in WORKDIR/checkpoints, written by orbax.

A checkpoint has two items:
  train: arrays -- `state` (TrainState: step, parameters, optimizer state),
    `carries` (per-layer state after the last trained window) and `data_key`
    (the raw key that every epoch's training series is drawn from).
  progress: JSON -- the `Progress` below.

With them a run goes on exactly as if it had never stopped: the epoch's series
is drawn again from `data_key`, training restarts at `progress.window` from the
saved carries, and metrics.jsonl is cut back to `progress.metrics_lines`.

A checkpoint is always restored into a target built from the current config.
Any leaf whose path, shape or dtype differs from the saved one is an error,
never a partial load: orbax alone would pad or cut an array of another shape.
"""

import contextlib
import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
  """A saved checkpoint does not fit the arrays the current config builds."""


class CheckpointUnreadable(ValueError):
  """A saved checkpoint is damaged: its files are missing or cut short."""


@dataclasses.dataclass(frozen=True)
class Progress:
  """Where a run stands when a checkpoint is saved.

  Attributes:
    epoch: the epoch of the next window to train.
    window: the next window to train within that epoch.
    step: windows trained so far (the checkpoint's number).
    metrics_lines: lines of metrics.jsonl written by then.
  """

  epoch: int
  window: int
  step: int
  metrics_lines: int


class Checkpoints:
  """The checkpoints of one run; use it as a context manager.

  `save` copies the arrays to the host and returns while orbax writes them, so
  training goes on meanwhile; leaving the context waits for the last write.

  Args:
    directory: where the checkpoints go, one sub-folder per step.
    keep: how many of the newest checkpoints are kept.
  """

  def __init__(self, directory, keep):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_handlers={
        'train': ocp.StandardCheckpointHandler(),
        'progress': ocp.JsonCheckpointHandler(),
      },
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, cleanup_tmp_directories=True
      ),
    )

  def __enter__(self):
    return self

  def __exit__(self, *exception):
    self._manager.wait_until_finished()
    self._manager.close()

  def latest_step(self):
    """The step of the newest checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def save(self, train, progress):
    """Saves the pytree of arrays `train` and `progress` as `progress.step`."""
    # Host copies: the caller may donate the device buffers to the next chunk
    # while orbax is still writing.
    self._manager.save(
      progress.step,
      args=ocp.args.Composite(
        train=ocp.args.StandardSave(jax.device_get(train)),
        progress=ocp.args.JsonSave(dataclasses.asdict(progress)),
      ),
    )

  def restore(self, target, step=None):
    """Reads a checkpoint into the structure of `target`.

    Args:
      target: a pytree of arrays or `jax.ShapeDtypeStruct` built from the
        current config, with the structure that `save` was given.
      step: which checkpoint; the newest if None.

    Returns:
      (train, Progress), with `train` shaped like `target`; or None when there
      is no checkpoint.

    Raises:
      CheckpointMismatch: if any leaf of `target` differs from the saved one
        in path, shape or dtype.
      CheckpointUnreadable: if the checkpoint's files cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    with self._readable(step):
      saved = self._manager.item_metadata(step)['train']
      if saved is None:
        raise FileNotFoundError('its array metadata is missing')
    differences = _differences(saved.tree, target)
    if differences:
      shown = '; '.join(differences[:4])
      more = len(differences) - 4
      raise CheckpointMismatch(
        f'checkpoint {step} in {self.directory} does not fit the current '
        f'config: {shown}' + (f'; and {more} more' if more > 0 else '')
      )
    abstract = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), target
    )
    with self._readable(step):
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          train=ocp.args.StandardRestore(abstract),
          progress=ocp.args.JsonRestore(),
        ),
      )
    return (
      jax.device_put(restored['train']),
      Progress(**restored['progress']),
    )

  @contextlib.contextmanager
  def _readable(self, step):
    """Turns any failure to read checkpoint `step` into CheckpointUnreadable."""
    try:
      yield
    except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds.
      lines = str(error).strip().splitlines() or [type(error).__name__]
      reason = lines[0] if len(lines[0]) <= 160 else lines[0][:157] + '...'
      earlier = [s for s in self._manager.all_steps() if s < step]
      where = os.path.join(self.directory, str(step))
      advice = (
        f'move {where} out of the workdir to resume from checkpoint '
        f'{max(earlier)}'
        if earlier
        else f'move {where} out of the workdir to start again from step 0'
      )
      raise CheckpointUnreadable(
        f'checkpoint {step} in {self.directory} cannot be read ({reason}); '
        f'{advice}, or add --fresh to start over with the old run kept aside'
      ) from error


def _by_path(tree):
  """{'state.params.head.bias': leaf, ...} for every leaf of `tree`."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {
    jax.tree_util.keystr(path, simple=True, separator='.'): leaf
    for path, leaf in leaves
  }


def _describe(leaf):
  if leaf is None:
    return 'nothing'
  return f'{np.dtype(leaf.dtype).name}{list(leaf.shape)}'


def _differences(saved, target):
  """Lines 'path: saved float32[8, 16], expected float32[12, 24]'."""
  saved, target = _by_path(saved), _by_path(target)
  differences = []
  # Parameters first: they say best what changed.
  paths = sorted(
    saved.keys() | target.keys(),
    key=lambda path: (not path.startswith('state.params.'), path),
  )
  for path in paths:
    have, want = _describe(saved.get(path)), _describe(target.get(path))
    if have != want:
      differences.append(f'{path}: saved {have}, expected {want}')
  return differences
