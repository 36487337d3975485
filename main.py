"""Trains a stacked recurrent network on the echo task.

  python main.py --config=configs/default.py
  python main.py --config=configs/default.py:notebook --workdir=runs/nb
  python main.py --config=configs/default.py --config.train.learning_rate=0.1
  python main.py --config=configs/sweep.py --config.sweep.num_seeds=64

Outputs go to --workdir (default: runs/<date>-<time>): config.json,
metrics.jsonl, TensorBoard event files, checkpoints/, loss.png and echo.png.
The same command with the same --workdir resumes the run; Ctrl-C or SIGTERM
stops it after a checkpoint and prints the command that resumes it. A config
with a `sweep` field runs the whole grid instead and writes results.csv,
losses.npz and plots (see echo/sweep.py).
"""

import signal

# Ctrl-C while Python loads the modules below ends the process at once, as
# nothing has been written yet (unless the shell started it ignoring Ctrl-C,
# as for `command &` in a script); `_run_and_leave` sets the handler after.
if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.SIG_DFL)

import json
import logging as std_logging
import os
import re
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from echo import checkpoint, train, validate
from echo import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  "Folder for the run's outputs; default a new runs/<date>-<time>. A folder "
  'that holds a run with the same config resumes it.',
)
_FRESH = flags.DEFINE_bool(
  'fresh',
  False,
  'Move a run already in --workdir aside, to WORKDIR.old-<date>-<time>, and '
  'start afresh there.',
)


def _one_line(error, argv):
  """A flag-parsing failure as one line that names the flag at fault."""
  text = str(error).strip()
  if isinstance(error, (AttributeError, KeyError)):
    # A mistyped config field; the message quotes it, maybe with a suggestion.
    plain = re.sub(r'[\\\'"]', '', text)
    key = re.search(r'instead of (\w+)', plain) or re.match(r'(\w+)', plain)
    suggestion = re.search(r'Did you mean (\w+)', plain)
    flag = next(
      (
        arg.split('=')[0]
        for arg in argv
        if arg.startswith('--config.')
        and key[1] in arg.split('=')[0].split('.')
      ),
      '--config',
    )
    hint = f' (did you mean {suggestion[1]!r}?)' if suggestion else ''
    return f'{flag}: the config has no field {key[1]!r}{hint}'
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if 'Traceback' in text:
    # A config file that raised: keep the flag and the exception's own line.
    return f'{lines[0].split(": ")[0]}: {lines[-1]}'
  return ' '.join(lines)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # noqa: BLE001 - any parse failure is one line.
    sys.exit(f'error: {_one_line(error, argv)}')


def _define_config_flag():
  # config_flags applies overrides from sys.argv while defining the flag, so a
  # mistyped field fails here, before absl parses anything.
  try:
    return config_flags.DEFINE_config_file(
      'config', 'configs/default.py', 'Training config file (and :preset).'
    )
  except Exception as error:  # noqa: BLE001 - any failure is one line.
    sys.exit(f'error: {_one_line(error, sys.argv)}')


_CONFIG = _define_config_flag()


def _command(argv, drop, add):
  """`argv` as `python main.py ...`, less the flags in `drop`, plus `add`.

  A dropped flag goes in any spelling: --name=value, --name value, and for
  --fresh also --nofresh.
  """
  kept, value_follows = [], False
  for arg in argv[1:]:
    if value_follows:
      value_follows = False
      continue
    name, equals, _ = arg.lstrip('-').partition('=')
    if arg.startswith('-') and name in drop:
      value_follows = not equals and name != 'fresh'
    elif arg.startswith('-') and name == 'nofresh' and 'fresh' in drop:
      pass
    else:
      kept.append(arg)
  return shlex.join(['python', argv[0], *kept, *add])


def _quiet_libraries():
  # Orbax logs several INFO lines per checkpoint, which would bury the
  # progress lines, and JAX one per accelerator kind it looks for and does
  # not find; warnings and errors still show.
  def keep(record):
    if record.levelno >= std_logging.WARNING:
      return True
    if f'{os.sep}orbax{os.sep}' in record.pathname:
      return False
    return not record.getMessage().startswith('Unable to initialize backend')

  logging.get_absl_handler().addFilter(keep)


class _LeaveAtOnce:
  """SIGINT and SIGTERM outside a run's training loop: one line, then exit.

  Outside that loop (which stops between chunks, see echo/stop.py) a signal
  ends the process at once. No KeyboardInterrupt is raised: one raised in a
  callback of JAX's or of the garbage collector is printed and lost, and
  tearing the interpreter down while XLA compiles or runs on its own threads
  can crash it.

  Attributes:
    outcome: what the line says is left, and how to go on.
  """

  def __init__(self):
    self.outcome = 'nothing was written'

  def __call__(self, number, frame):
    del frame
    name = signal.Signals(number).name
    try:
      print(f'Stopped by {name} at once; {self.outcome}', file=sys.stderr)
      sys.stderr.flush()
      logging.flush()
    finally:
      # Even if the signal came while stderr was being written to.
      os._exit(128 + number)


_LEAVE_AT_ONCE = _LeaveAtOnce()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = _CONFIG.value
    if 'sweep' in config:
      # Imported here: its plotting brings in matplotlib, a slow import that
      # a single run does not need.
      from echo import sweep  # noqa: PLC0415

      sweep.validate(config)
    else:
      validate.validate(config)
  except OSError as error:  # The config file could not be loaded.
    sys.exit(f'error: --config: {str(error).strip().splitlines()[-1].strip()}')
  except validate.ConfigError as error:
    sys.exit(f'error: {error}')
  # Before anything computes: XLA's CPU client reads it once, at its start.
  train.use_cpu_threads(
    (sweep.cpu_threads if 'sweep' in config else train.cpu_threads)(config)
  )

  workdir = _WORKDIR.value
  try:
    if _FRESH.value and workdir:
      moved = workdir_lib.move_aside(workdir)
      if moved:
        logging.info('Moved the run that was in %s to %s', workdir, moved)
    workdir = workdir or workdir_lib.new_default()
    logging.info('workdir: %s', workdir)
    _quiet_libraries()
    if 'sweep' in config:
      _LEAVE_AT_ONCE.outcome = (
        f'{workdir} keeps what the sweep wrote before; start it again with '
        '--fresh, which moves it aside'
      )
      sweep.run(config, workdir)
      return
    _LEAVE_AT_ONCE.outcome = (
      f'{workdir} keeps what was saved before; the same command goes on from '
      'its newest checkpoint, if it has one'
    )
    result = train.train_and_evaluate(config, workdir)
  except train.Diverged as error:
    retry = _command(
      sys.argv,
      drop=('config.train.learning_rate', 'workdir', 'fresh'),
      add=(
        f'--config.train.learning_rate={error.learning_rate / 10:g}',
        f'--workdir={workdir}',
        '--fresh',
      ),
    )
    sys.exit(f'error: {error}, for example: {retry}')
  except (
    workdir_lib.WorkdirError,
    checkpoint.CheckpointMismatch,
    FileExistsError,
  ) as error:
    sys.exit(f'error: {error}')
  except checkpoint.CheckpointUnreadable as error:
    print(f'error: {error}', file=sys.stderr, flush=True)
    # Reads of the damaged files still in flight go on failing in
    # tensorstore's threads, each printing a traceback: silence them.
    # TODO: a few of those tracebacks can still come before this line; only
    # reading checkpoints in orbax without concurrent reads would stop them.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    sys.exit(1)
  except (OSError, json.JSONDecodeError) as error:
    # The workdir cannot be made, read or written.
    sys.exit(f'error: --workdir={workdir}: {error}')
  stopped_by = result['stopped_by']
  if stopped_by:
    resume = _command(
      sys.argv, drop=('workdir', 'fresh'), add=(f'--workdir={workdir}',)
    )
    progress = result['progress']
    print(
      f'Stopped by {stopped_by} at epoch {progress.epoch}, window '
      f'{progress.window}, checkpoint saved in {workdir}; resume with: '
      f'{resume}',
      file=sys.stderr,
    )
    # The shell's convention for a process ended by a signal.
    sys.exit(128 + signal.Signals[stopped_by].value)


def _run_and_leave():
  """Runs main, then ends the process without the interpreter's teardown.

  By the time main returns every output is written and closed; tearing down
  JAX, orbax and matplotlib would then take most of a second more. Errors
  and signal stops leave through the usual exit.
  """
  for number in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(number) is not signal.SIG_IGN:
      signal.signal(number, _LEAVE_AT_ONCE)
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit as leaving:
    if leaving.code not in (None, 0):
      raise
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)


if __name__ == '__main__':
  _run_and_leave()
