"""Trains a stacked recurrent network on the echo task.

  python main.py --config=configs/default.py
  python main.py --config=configs/default.py:notebook --workdir=runs/nb
  python main.py --config=configs/default.py --config.train.learning_rate=0.1
  python main.py --config=configs/sweep.py --config.sweep.num_seeds=64

Outputs go to --workdir (default: runs/<date>-<time>): config.json and
metrics.jsonl, one JSON line per progress line. A config with a `sweep`
field runs the whole grid instead and writes results.csv, losses.npz and
plots (see echo/sweep.py).
"""

import re
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from echo import train, validate

_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Folder for config.json and metrics.jsonl; default runs/<date>-<time>.',
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  workdir = _WORKDIR.value or time.strftime('runs/%Y%m%d-%H%M%S')
  try:
    config = _CONFIG.value
    is_sweep = 'sweep' in config
    if is_sweep:
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
  logging.info('workdir: %s', workdir)
  try:
    if is_sweep:
      sweep.run(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except FileExistsError as error:
    sys.exit(f'error: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
