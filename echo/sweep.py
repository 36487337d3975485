"""Sweeps: a grid of whole training runs in one command.

Shapes: M members, E epochs, W windows per epoch.

A sweep config is a run config (configs/default.py) with a `sweep` field. Its
axes replace the run fields they name (`sweep.state_sizes` sets
`model.state_size`, and so on); a one-element tuple is an axis not swept.
Axes come in two kinds:

  vmapped     seeds, learning rates, echo steps. They change no shape, so
              every member of a combination runs side by side in one compiled
              program, `jit(vmap(train))`, whose member axis is sharded over
              every device JAX sees.
  structural  modes, cells, layers, state sizes, truncated lengths. They
              change shapes or the program, so each combination compiles its
              own; a Python loop visits the combinations.

`make_train(config)` is a whole run as a pure `train(keys, hparams)`, built
from the pieces `echo.train.train_and_evaluate` uses, in the same order: each
member equals the run main.py makes alone with the member's values.
"""

import contextlib
import csv
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from echo import data as data_lib
from echo import evaluate as evaluate_lib
from echo import sweep_plot
from echo import train as train_lib
from echo import validate as validate_lib
from echo import workdir as workdir_lib

# Structural axes: field of config.sweep -> the run config field it sets.
STRUCTURAL_AXES = {
  'modes': 'mode',
  'cells': 'model.cell',
  'num_layers': 'model.num_layers',
  'state_sizes': 'model.state_size',
  'truncated_lengths': 'data.truncated_length',
}
# Vmapped axes beside the seeds (`sweep.num_seeds`), likewise.
VMAPPED_AXES = {
  'echo_steps': 'data.echo_step',
  'learning_rates': 'train.learning_rate',
}
# Columns of results.csv that say which member a row is.
VALUE_COLUMNS = (
  'seed',
  'learning_rate',
  'echo_step',
  'mode',
  'cell',
  'num_layers',
  'state_size',
  'truncated_length',
)
SCORE_COLUMNS = ('final_loss', 'eval_loss', 'eval_accuracy', 'diverged')
# The final loss averages the last epoch's last windows: in carry mode every
# epoch restarts from zero state, so its first windows are worse.
FINAL_WINDOWS = 100
MEMBER_AXIS = 'members'


def _column(path):
  return path.split('.')[-1]


# Column of results.csv -> the run config field it holds.
_PATHS = {
  'seed': 'seed',
  **{
    _column(path): path
    for path in (*STRUCTURAL_AXES.values(), *VMAPPED_AXES.values())
  },
}


def _get(config, path):
  for part in path.split('.'):
    config = config[part]
  return config


def _describe(config, paths):
  """'name=value, ...' of the run fields at `paths`, for messages."""
  return ', '.join(f'{_column(path)}={_get(config, path)!r}' for path in paths)


def _set(config, path, value):
  *parents, leaf = path.split('.')
  for parent in parents:
    config = config[parent]
  config[leaf] = value


def member_config(config, values):
  """The run config of one member, as main.py would run it alone.

  Args:
    config: a sweep config.
    values: dict from columns of results.csv (`seed`, `learning_rate`,
      `state_size`, ...) to the member's values; the others keep the base
      config's.

  Returns:
    a copy of `config` without its `sweep`, with `values` set.
  """
  run_config = config.copy_and_resolve_references()
  with run_config.unlocked():
    del run_config['sweep']
  for name, value in values.items():
    _set(run_config, _PATHS[name], value)
  return run_config


def _structural_values(config):
  """Dicts of the structural columns' values, one per combination."""
  names = [_column(path) for path in STRUCTURAL_AXES.values()]
  for values in itertools.product(*map(config.sweep.get, STRUCTURAL_AXES)):
    yield dict(zip(names, values, strict=True))


def combinations(config):
  """The run config of every structural combination, in grid order.

  The vmapped fields (seed, learning rate, echo step) keep their base values;
  `members` lists the values a combination's members take.
  """
  for values in _structural_values(config):
    yield member_config(config, values)


def cpu_threads(config):
  """echo.train.cpu_threads for the whole grid: a count only if every
  combination asks for the same one, else None (every core)."""
  counts = {train_lib.cpu_threads(run) for run in combinations(config)}
  return counts.pop() if len(counts) == 1 else None


def members(config):
  """The vmapped values of every member of one combination, in grid order.

  Seeds are `config.seed + i` for i below `num_seeds`, innermost, so the
  repeats of one setting are neighbours.

  Returns:
    list of dicts with `seed`, `learning_rate` and `echo_step`.
  """
  sweep = config.sweep
  seeds = range(config.seed, config.seed + sweep.num_seeds)
  return [
    {'seed': seed, 'learning_rate': learning_rate, 'echo_step': echo_step}
    for echo_step, learning_rate, seed in itertools.product(
      sweep.echo_steps, sweep.learning_rates, seeds
    )
  ]


def validate(config):
  """Raises ConfigError naming the first field that cannot work.

  Checks the sweep's own fields, then every run it would make, before
  anything is compiled.
  """
  validate_lib.validate_sweep(config)
  _validate_seeds(config)
  for structural in _structural_values(config):
    for echo_step, learning_rate in itertools.product(
      config.sweep.echo_steps, config.sweep.learning_rates
    ):
      run_config = member_config(
        config,
        {
          **structural,
          'echo_step': echo_step,
          'learning_rate': learning_rate,
        },
      )
      try:
        validate_lib.validate(run_config)
      except validate_lib.ConfigError as error:
        member = _describe(
          run_config, (*STRUCTURAL_AXES.values(), *VMAPPED_AXES.values())
        )
        raise validate_lib.ConfigError(
          f'{error} (in the sweep member {member})'
        ) from None
  heatmap = tuple(config.sweep.heatmap)
  if heatmap and (
    len(heatmap) != 2 or not set(heatmap) <= set(VALUE_COLUMNS[1:])
  ):
    raise validate_lib.ConfigError(
      f'config.sweep.heatmap={config.sweep.heatmap!r} must be () or two of '
      + ', '.join(VALUE_COLUMNS[1:])
    )


def _validate_seeds(config):
  """Raises ConfigError unless every member's seed fits in an int32.

  The members' seeds enter their program as an int32 array `[M]`; each gives
  the key a single run makes of the same seed, negative ones too.
  """
  low, high = validate_lib.SEEDS
  first = config.seed
  if not isinstance(first, int) or isinstance(first, bool):
    return  # validate_lib.validate names it, as for a single run.
  last = first + config.sweep.num_seeds - 1
  if first < low or last > high:
    raise validate_lib.ConfigError(
      f'config.seed={first} with config.sweep.num_seeds='
      f'{config.sweep.num_seeds} gives seeds {first} to {last}, which must '
      f'lie in [{low}, {high}] (seeds are int32)'
    )


def _with_learning_rate(opt_state, learning_rate):
  """`opt_state` of `inject_hyperparams` with another learning rate."""
  hyperparams = dict(opt_state.hyperparams)
  old = hyperparams['learning_rate']
  hyperparams['learning_rate'] = jnp.asarray(learning_rate, old.dtype)
  return opt_state._replace(hyperparams=hyperparams)


def make_train(config):
  """A whole run of `config` as a pure function `train(keys, hparams)`.

  The run is the one `echo.train.train_and_evaluate` makes: parameters from
  the first key, each epoch's series from `epoch_data_key`, carries reset to
  zeros as each epoch starts, `train_windows` over the epoch, then
  `evaluate` on the held-out series of the third key. Epochs and windows are
  nested `lax.scan`s, so `vmap` over `train` runs many members at once.

  Args:
    config: a run config (no `sweep` field needed).

  Returns:
    train(keys, hparams) -> dict with `losses` `[E, W]` and the scalars
    `eval_loss` and `eval_accuracy`, where `keys` is `run_keys(seed)` and
    `hparams` holds scalars `learning_rate` and `echo_step`; they replace
    the config's, and may be traced.
  """
  model = train_lib.make_model(config)
  optimizer = train_lib.make_optimizer(config.train)
  data_config = config.data
  mode = config.mode

  def train(keys, hparams):
    init_key, data_key, eval_key = keys
    echo_step = hparams['echo_step']
    state = train_lib.create_state(
      init_key,
      model,
      optimizer,
      data_config.batch_size,
      data_config.truncated_length,
    )
    state = state.replace(
      opt_state=_with_learning_rate(state.opt_state, hparams['learning_rate'])
    )

    def epoch(state, index):
      key = train_lib.epoch_data_key(
        data_key, index, data_config.new_series_each_epoch
      )
      inputs, targets = data_lib.make_windows(key, data_config, mode, echo_step)
      carries = model.initial_carries(data_config.batch_size)
      state, _, losses = train_lib.train_windows(
        model, optimizer, mode, state, carries, inputs, targets
      )
      return state, losses

    state, losses = jax.lax.scan(epoch, state, jnp.arange(config.num_epochs))
    inputs, targets = data_lib.make_windows(
      eval_key, data_config, mode, echo_step
    )
    scores = evaluate_lib.evaluate(
      model, state.params, inputs, targets, mode, echo_step
    )
    return {
      'losses': losses,
      'eval_loss': scores['loss'],
      'eval_accuracy': scores['accuracy'],
    }

  return train


def member_mesh():
  """A 1-D mesh over every device JAX sees, on every host."""
  return Mesh(np.array(jax.devices()), (MEMBER_AXIS,))


def _global_array(values, sharding):
  """`values` `[M]` as one array split over the mesh, padded to fill it.

  Padding repeats the first member, so it computes nothing out of range.
  """
  padding = -len(values) % sharding.mesh.size
  values = np.concatenate([values, np.repeat(values[:1], padding)])
  return jax.make_array_from_callback(
    values.shape, sharding, lambda index: values[index]
  )


def compile_members(config, member_values, mesh=None):
  """Compiles the program that trains the members of one combination.

  Args:
    config: the combination's run config.
    member_values: list of dicts with `seed`, `learning_rate`, `echo_step`.
    mesh: a 1-D mesh with axis 'members'; by default every device.

  Returns:
    (program, arguments, traces, compile_s): `program(*arguments)` returns
    the members' `losses` `[M', E, W]`, `eval_loss` `[M']` and
    `eval_accuracy` `[M']`, where M' pads M to a multiple of the devices;
    `traces` counts how often tracing ran (once), `compile_s` its seconds.
  """
  mesh = mesh or member_mesh()
  sharding = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))
  train = make_train(config)
  traces = 0

  def train_members(seeds, learning_rates, echo_steps):
    nonlocal traces
    traces += 1

    def member(seed, learning_rate, echo_step):
      hparams = {'learning_rate': learning_rate, 'echo_step': echo_step}
      return train(train_lib.run_keys(seed), hparams)

    return jax.vmap(member)(seeds, learning_rates, echo_steps)

  columns = (
    ('seed', np.int32),
    ('learning_rate', np.float32),
    ('echo_step', np.int32),
  )
  arguments = [
    _global_array(
      np.array([values[name] for values in member_values], dtype), sharding
    )
    for name, dtype in columns
  ]
  started = time.perf_counter()
  program = (
    jax.jit(train_members, out_shardings=sharding).lower(*arguments).compile()
  )
  return program, arguments, traces, time.perf_counter() - started


def run_members(config, member_values, mesh=None):
  """Trains the members of one combination in one compiled program.

  Takes the arguments of `compile_members`.

  Returns:
    (outputs, timing): `outputs` holds numpy `losses` `[M, E, W]`,
    `eval_loss` `[M]` and `eval_accuracy` `[M]`; `timing` holds `traces`
    (times the program was traced), `compile_s` and `run_s`.
  """
  program, arguments, traces, compile_s = compile_members(
    config, member_values, mesh
  )
  started = time.perf_counter()
  outputs = jax.block_until_ready(program(*arguments))
  run_s = time.perf_counter() - started

  # On several hosts each holds only its own members; every host gets all.
  outputs = multihost_utils.process_allgather(outputs, tiled=True)
  outputs = {
    name: np.asarray(value)[: len(member_values)]
    for name, value in outputs.items()
  }
  return outputs, {'traces': traces, 'compile_s': compile_s, 'run_s': run_s}


def final_loss(losses):
  """Mean over the last `FINAL_WINDOWS` windows of the last epoch, or the
  whole last epoch if it is shorter: `[..., E, W]` -> `[...]`."""
  return losses[..., -1, -FINAL_WINDOWS:].mean(-1)


def _rows(config, member_values, outputs):
  """One results row per member of one combination."""
  structural = {
    _column(path): _get(config, path) for path in STRUCTURAL_AXES.values()
  }
  losses = outputs['losses']
  finals = final_loss(losses)
  diverged = ~np.isfinite(losses).all(axis=(1, 2)) | ~np.isfinite(
    outputs['eval_loss']
  )
  return [
    {
      **structural,
      **values,
      'final_loss': float(finals[index]),
      'eval_loss': float(outputs['eval_loss'][index]),
      'eval_accuracy': float(outputs['eval_accuracy'][index]),
      'diverged': bool(diverged[index]),
    }
    for index, values in enumerate(member_values)
  ]


def _stack_curves(curves):
  """Loss curves `[M_i, E, W_i]` -> `[M, E, max W]`, NaN past a curve's end
  (truncated lengths change the windows per epoch)."""
  windows = max(curve.shape[-1] for curve in curves)
  return np.concatenate(
    [
      np.pad(
        curve,
        ((0, 0), (0, 0), (0, windows - curve.shape[-1])),
        constant_values=np.nan,
      )
      for curve in curves
    ]
  )


def _write_results(rows, losses, workdir):
  columns = VALUE_COLUMNS + SCORE_COLUMNS
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  np.savez(
    os.path.join(workdir, 'losses.npz'),
    losses=losses,
    **{name: np.array([row[name] for row in rows]) for name in columns},
  )


def run(config, workdir):
  """Runs the sweep `config` and writes its results to `workdir`.

  Writes `config.json`, `results.csv` (a row per member: its values and
  scores), `losses.npz` (`losses` `[M, E, W]` and a `[M]` array per column
  of results.csv), `final_loss.png` and, if `config.sweep.heatmap` names
  two columns, `heatmap.png`. On several hosts only the first writes.

  Args:
    config: a ConfigDict as made by configs/sweep.py.
    workdir: folder for the outputs; made if missing.

  Returns:
    dict with `rows` (one dict per member, as in results.csv), `losses`
    `[M, E, W]` and `traces` (times each combination's program was traced).

  Raises:
    ConfigError: before anything is compiled or written, if a field of
      `config` cannot work.
    WorkdirError: if another process holds `workdir`.
    FileExistsError: if `workdir` already holds a sweep or a run.
  """
  validate(config)
  if config.sweep.distributed:
    # TODO: pass coordinator_address, num_processes and process_id from the
    # config, for hosts that no cluster manager JAX detects (SLURM, Open MPI,
    # Kubernetes, Cloud TPU) starts; without them those hosts cannot join.
    jax.distributed.initialize()
  writes = jax.process_index() == 0
  # The writer holds the workdir, so two sweeps started together cannot both
  # find it empty and write into each other's results.
  with workdir_lib.lock(workdir) if writes else contextlib.nullcontext():
    for name in ('results.csv', 'config.json'):
      path = os.path.join(workdir, name)
      if os.path.exists(path):
        raise FileExistsError(
          f'{workdir} already holds a sweep or a run ({path}); choose another '
          '--workdir, or move it aside with main.py --fresh'
        )
    if writes:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
    return _sweep(config, workdir, writes)


def _count(number, noun):
  """'1 device', '4 devices'."""
  return f'{number} {noun}' + ('' if number == 1 else 's')


def _sweep(config, workdir, writes):
  """run, once `workdir` is held and its config.json written."""
  train_lib.use_compile_cache(config.compile_cache_dir)
  mesh = member_mesh()
  run_configs = list(combinations(config))
  member_values = members(config)
  rows, curves, traces = [], [], []
  for index, run_config in enumerate(run_configs):
    outputs, timing = run_members(run_config, member_values, mesh)
    rows.extend(_rows(run_config, member_values, outputs))
    curves.append(outputs['losses'])
    traces.append(timing['traces'])
    logging.info(
      'Combination %d of %d (%s): %s on %s, compiled in %.1f s, trained in '
      '%.1f s',
      index + 1,
      len(run_configs),
      _describe(run_config, STRUCTURAL_AXES.values()),
      _count(len(member_values), 'member'),
      _count(mesh.size, 'device'),
      timing['compile_s'],
      timing['run_s'],
    )

  losses = _stack_curves(curves)
  if writes:
    _write_results(rows, losses, workdir)
    sweep_plot.final_loss(rows, os.path.join(workdir, 'final_loss.png'))
    if config.sweep.heatmap:
      sweep_plot.heatmap(
        rows, *config.sweep.heatmap, os.path.join(workdir, 'heatmap.png')
      )
  diverged = sum(row['diverged'] for row in rows)
  logging.info(
    '%d members, %d diverged; results in %s', len(rows), diverged, workdir
  )
  return {'rows': rows, 'losses': losses, 'traces': traces}
