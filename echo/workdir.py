"""A run's folder: its saved config, and whether a new request may go on there.

A workdir that already holds a run is resumed only with the same config, but
for the fields in `MAY_DIFFER`, which change neither the shapes nor the
numbers that a run computes:

  num_epochs         extends a finished run, or ends one sooner
  checkpoint.*       how often checkpoints are saved and how many are kept
  compile_cache_dir  where compiled programs are cached, if at all
  cpu_threads        how many threads XLA's CPU backend runs on

Any other difference (seed, mode, data sizes, model, optimizer, learning rate,
log_every, ...) is refused with the fields listed. A folder that holds a
sweep, or files but no run, is refused too. `move_aside` keeps the old run
under another name so that the folder can start afresh (main.py --fresh);
nothing is ever deleted.
"""

import contextlib
import fcntl
import json
import os
import time

from absl import logging

# Fields (or prefixes of fields) that may differ from the saved run's.
# TODO: let train.log_every change too. Checkpoints sit on multiples of the
# old value, and the chunk function cannot yet start a chunk elsewhere, so a
# new value is refused for now.
MAY_DIFFER = ('num_epochs', 'checkpoint.', 'compile_cache_dir', 'cpu_threads')

# What a folder holds once a run or a sweep has started in it.
_RUN_FILES = ('config.json', 'metrics.jsonl', 'checkpoints')
# Left by `lock`; a folder holding only it holds nothing.
_LOCK = '.lock'


class WorkdirError(ValueError):
  """The workdir holds a run that the requested config may not go on with."""


def config_path(workdir):
  return os.path.join(workdir, 'config.json')


def holds_a_run(workdir):
  """Whether `workdir` holds a run or a sweep, finished or not."""
  return any(os.path.exists(os.path.join(workdir, name)) for name in _RUN_FILES)


def flatten(tree, prefix=''):
  """{'data.batch_size': 5, ...} for a nested dict of values."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def config_changes(saved, requested):
  """Fields whose values differ between two configs.

  Args:
    saved: the config in a workdir's config.json, as a nested dict.
    requested: the config to run, as a nested dict.

  Returns:
    (refused, allowed): lists of (field, saved value, requested value); a
    field one config lacks has the value None there.
  """
  saved, requested = flatten(saved), flatten(requested)
  refused, allowed = [], []
  for field in sorted(saved.keys() | requested.keys()):
    change = (field, saved.get(field), requested.get(field))
    if change[1] == change[2]:
      continue
    may_differ = any(
      field == name or (name.endswith('.') and field.startswith(name))
      for name in MAY_DIFFER
    )
    (allowed if may_differ else refused).append(change)
  return refused, allowed


def prepare(config, workdir):
  """Makes `workdir` ready for `config`; `write_config` then records it.

  Nothing in an existing workdir is changed here, so a run that fails to
  start leaves the saved one as it was.

  Raises:
    WorkdirError: if `workdir` holds a run whose config differs in a field
      that changes what is computed, a run without its config.json, a
      sweep, or other files but no run.
  """
  path = config_path(workdir)
  requested = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      saved = error
    if not isinstance(saved, dict):
      reason = saved if isinstance(saved, Exception) else 'not an object'
      raise WorkdirError(
        f'{path} cannot be read as a config ({reason}); start afresh with '
        'main.py --fresh (which moves the old run aside) or another --workdir'
      )
    if 'sweep' in saved and 'sweep' not in requested:
      raise WorkdirError(
        f'{workdir} holds a sweep, not a run; choose another --workdir, or '
        'move the sweep aside with main.py --fresh'
      )
    refused, allowed = config_changes(saved, requested)
    if refused:
      fields = '; '.join(
        f'{field} saved {old!r}, requested {new!r}'
        for field, old, new in refused
      )
      raise WorkdirError(
        f'{workdir} holds a run with another config: {fields}. Request the '
        'saved values to resume it, or start afresh with main.py --fresh '
        '(which moves the old run aside) or another --workdir'
      )
    for field, old, new in allowed:
      logging.info('%s was %r in the saved run; now %r', field, old, new)
  elif holds_a_run(workdir):  # Without its config.json.
    raise WorkdirError(
      f'{workdir} holds a run but no config.json, so it cannot be resumed; '
      'choose another --workdir, or move it aside with main.py --fresh'
    )
  elif os.path.isdir(workdir):
    others = sorted(set(os.listdir(workdir)) - {_LOCK})
    if others:
      shown = ', '.join(others[:3]) + (', ...' if len(others) > 3 else '')
      raise WorkdirError(
        f'{workdir} holds files but no run ({shown}); choose an empty or new '
        '--workdir, so that nothing in it is mixed with the run'
      )
  os.makedirs(workdir, exist_ok=True)


def write_config(config, workdir):
  """Writes config.json: the config of the run that `workdir` now holds."""
  with open(config_path(workdir), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


@contextlib.contextmanager
def lock(workdir):
  """Holds `workdir` for one process: a second one is refused, not mixed in.

  The lock is an flock on WORKDIR/.lock, so the system lets go of it when the
  process ends, however it ends. A folder that still holds no run when the
  context ends (it was refused, or the run failed before it started) is left
  as it was found: the .lock made here is removed, and so is the folder if
  this made it and it is empty.

  Raises:
    WorkdirError: if another process holds the workdir.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(
      f'--workdir={workdir} is a file; a run needs a folder there'
    )
  made_folder = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, _LOCK)
  made_lock = not os.path.exists(path)
  try:
    with _locked(workdir, path):
      yield
  finally:
    if made_lock and not holds_a_run(workdir):
      with contextlib.suppress(OSError):
        os.remove(path)
        if made_folder and not os.listdir(workdir):
          os.rmdir(workdir)


@contextlib.contextmanager
def _locked(workdir, path):
  """The flock of `lock`, on the file `path`."""
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'unknown'
      raise WorkdirError(
        f'{workdir} is in use by another run (process {holder}); wait for it '
        'or choose another --workdir'
      ) from None
    f.truncate(0)
    f.write(f'{os.getpid()}\n')
    f.flush()
    yield


def new_default(parent='runs'):
  """Makes and returns a new folder PARENT/<date>-<time>[-N], never reused.

  os.mkdir fails on a name that exists, so runs started in the same second,
  even by two processes at once, get folders of their own.
  """
  os.makedirs(parent, exist_ok=True)
  base = os.path.join(parent, time.strftime('%Y%m%d-%H%M%S'))
  name, count = base, 1
  while True:
    try:
      os.mkdir(name)
      return name
    except FileExistsError:
      count += 1
      name = f'{base}-{count}'


def move_aside(workdir):
  """Renames a `workdir` that holds a run to WORKDIR.old-<date>-<time>[-N].

  A folder that holds no run or sweep (see `holds_a_run`) stays as it is.

  Returns:
    The new name, or None if there was no run to move.

  Raises:
    WorkdirError: if a run is going on in `workdir`, or it is not a folder
      that can be renamed.
  """
  workdir = os.path.normpath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'{workdir} is a file, not a run folder')
  if os.path.abspath(workdir) == os.path.abspath(os.curdir):
    raise WorkdirError('--fresh cannot move the current folder aside')
  if not os.path.isdir(workdir) or not holds_a_run(workdir):
    return None
  base = f'{workdir}.old-{time.strftime("%Y%m%d-%H%M%S")}'
  target, count = base, 0
  while os.path.exists(target):
    count += 1
    target = f'{base}-{count}'
  with lock(workdir):  # Never move a run that is going on.
    os.rename(workdir, target)
  return target
