"""Training with truncated backpropagation through time (TBPTT).

Shapes: W windows, B batch, T truncated_length (steps per window).

`train_step` is pure: one optimizer update on one window, returning the
carries after the window's last step through `lax.stop_gradient`, so no
gradient crosses a window edge. `train_windows` scans it over many windows in
one compiled loop. `train_and_evaluate` runs the epochs: the host loop visits
one chunk of `log_every` windows at a time and, between chunks, logs, saves
checkpoints, evaluates after each epoch and stops when asked to.
"""

import functools
import importlib
import json
import os
import threading

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from echo import checkpoint as checkpoint_lib
from echo import data as data_lib
from echo import evaluate as evaluate_lib
from echo import metrics as metrics_lib
from echo import model as model_lib
from echo import programs as programs_lib
from echo import progress as progress_lib
from echo import stop as stop_lib
from echo import validate as validate_lib
from echo import workdir as workdir_lib

# Consecutive windows of the evaluation series drawn in echo.png.
_ECHO_WINDOWS = 4


@flax.struct.dataclass
class TrainState:
  """Everything an update changes: step count, parameters, optimizer state."""

  step: jax.Array
  params: dict
  opt_state: optax.OptState


def make_model(config):
  """The StackedRNN described by `config.model` and `config.data`."""
  return model_lib.StackedRNN(
    num_classes=config.data.num_classes,
    state_size=config.model.state_size,
    num_layers=config.model.num_layers,
    cell=config.model.cell,
    forget_bias=config.model.forget_bias,
  )


def make_optimizer(train_config):
  """The optax optimizer named by `train_config.optimizer`.

  The learning rate lives in the optimizer state (`inject_hyperparams`), so a
  batch of states can hold a different learning rate per member.
  """
  name = train_config.optimizer
  if name == 'adagrad':
    build = functools.partial(
      optax.adagrad,
      initial_accumulator_value=train_config.initial_accumulator,
    )
  elif name == 'adam':
    build = optax.adam
  elif name == 'rmsprop':
    build = optax.rmsprop
  elif name == 'sgd':
    build = optax.sgd
  else:
    raise ValueError(f'unknown optimizer {name!r}')
  return optax.inject_hyperparams(build)(
    learning_rate=train_config.learning_rate
  )


def create_state(key, model, optimizer, batch_size, truncated_length):
  """Initial TrainState: parameters from `key`, fresh optimizer state."""
  carries = model.initial_carries(batch_size)
  tokens = jnp.zeros((batch_size, truncated_length), jnp.int32)
  params = model.init(key, carries, tokens)['params']
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
  )


def window_loss(params, model, carries, inputs, targets):
  """Mean softmax cross-entropy over one window `[B, T]`.

  Returns:
    (loss, carries after the window's last step).
  """
  carries, logits = model.apply({'params': params}, carries, inputs)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return losses.mean(), carries


def train_step(model, optimizer, state, carries, inputs, targets):
  """One update on one window; gradients stop at the window's edges.

  Args:
    model: the StackedRNN.
    optimizer: an optax GradientTransformation.
    state: TrainState.
    carries: per-layer state at the window's first step.
    inputs: int `[B, T]`.
    targets: int `[B, T]`.

  Returns:
    (state, carries after the window, loss before the update).
  """
  grad_fn = jax.value_and_grad(window_loss, has_aux=True)
  (loss, carries), grads = grad_fn(
    state.params, model, carries, inputs, targets
  )
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  state = TrainState(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    opt_state=opt_state,
  )
  return state, jax.lax.stop_gradient(carries), loss


def train_windows(model, optimizer, mode, state, carries, inputs, targets):
  """`train_step` scanned over windows `[W, B, T]`, in order.

  In 'carry' mode each window starts from the carries the previous one left;
  in 'reset' mode every window starts from zeros.

  Returns:
    (state, carries after the last window, losses `[W]`).
  """
  zeros = jax.tree.map(jnp.zeros_like, carries)

  def body(loop, window):
    state, carries = loop
    if mode == 'reset':
      carries = zeros
    state, carries, loss = train_step(model, optimizer, state, carries, *window)
    return (state, carries), loss

  (state, carries), losses = jax.lax.scan(
    body, (state, carries), (inputs, targets)
  )
  return state, carries, losses


def checkpoint_arrays(state, data_key, carries):
  """The arrays a checkpoint holds: TrainState, raw data key, carries."""
  return {'state': state, 'carries': carries, 'data_key': data_key}


def run_keys(seed):
  """(init_key, data_key, eval_key) of a run: parameters, training data,
  and the held-out evaluation series."""
  return tuple(jax.random.split(jax.random.key(seed), 3))


def epoch_data_key(data_key, epoch, new_series_each_epoch):
  """The key of one epoch's training series."""
  if new_series_each_epoch:
    return jax.random.fold_in(data_key, epoch)
  return data_key


def use_compile_cache(directory):
  """Keeps every compiled program in `directory` ('' or None: no cache).

  JAX reads the setting when it first compiles, so call this before that.
  """
  if not directory:
    return
  jax.config.update(
    'jax_compilation_cache_dir',
    os.path.join(os.path.expanduser(directory), 'xla'),
  )
  # The programs here compile in about a second; cache them all.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def cpu_threads(config):
  """Threads for XLA's CPU backend: `config.cpu_threads`, or if that is 0,
  1 for a model of small kernels only and None (every core) otherwise."""
  if config.cpu_threads:
    return config.cpu_threads
  small = model_lib.kernels_are_small(
    config.data.num_classes, config.model.state_size, config.model.cell
  )
  return 1 if small else None


def use_cpu_threads(threads):
  """Runs XLA's CPU programs on `threads` threads (None: every core).

  Takes effect only before JAX first computes in the process: its CPU client
  reads the count from $PJRT_NPROC when it starts. A value the user already
  set there wins.

  Returns:
    The thread count in force from then on, or None for every core.
  """
  if threads and 'PJRT_NPROC' not in os.environ:
    os.environ['PJRT_NPROC'] = str(threads)
  return int(os.environ['PJRT_NPROC']) if 'PJRT_NPROC' in os.environ else None


class _Trainer:
  """Compiled pieces of one run, built once from its config.

  Each is a `programs.SavedProgram`: with `config.compile_cache_dir` set, a
  second run of the same config loads its compiled programs from there
  instead of tracing and compiling them again.
  """

  def __init__(self, config):
    self.config = config
    self.model = make_model(config)
    self.optimizer = make_optimizer(config.train)
    self.windows_per_epoch = data_lib.num_windows(config.data)
    self.chunk = min(config.train.log_every, self.windows_per_epoch)
    # Times the chunk and the evaluation programs were made (traced, or read
    # from disk): once each per run.
    self.traces = 0
    self.eval_traces = 0
    directory = config.compile_cache_dir and os.path.join(
      config.compile_cache_dir, 'programs'
    )
    # What the programs compute depends on the config, but not on the fields
    # that only say which run this is, how it is kept, or (cpu_threads, which
    # SavedProgram keys by the thread count in force) where it runs.
    description = config.copy_and_resolve_references().to_dict()
    for field in (
      'seed',
      'num_epochs',
      'checkpoint',
      'compile_cache_dir',
      'cpu_threads',
    ):
      description.pop(field)
    program = functools.partial(
      programs_lib.SavedProgram,
      description=json.dumps(description, sort_keys=True),
      directory=directory,
    )
    self.start = program(self._start, 'start')
    self.epoch_windows = program(self._epoch_windows, 'epoch_windows')
    self.train_chunk = program(
      self._train_chunk,
      'train_chunk',
      donate_argnums=(0, 1),
      on_build=self._count_trace,
    )
    self.evaluate = program(
      self._evaluate, 'evaluate', on_build=self._count_eval_trace
    )

  def _count_trace(self):
    self.traces += 1

  def _count_eval_trace(self):
    self.eval_traces += 1

  def _start(self, seed):
    """(initial TrainState, raw data key, evaluation windows) of a run.

    The raw data key (`jax.random.key_data`) is what `epoch_windows` takes
    and what checkpoints keep.
    """
    config = self.config
    init_key, data_key, eval_key = run_keys(seed)
    state = create_state(
      init_key,
      self.model,
      self.optimizer,
      config.data.batch_size,
      config.data.truncated_length,
    )
    evaluation = data_lib.make_windows(eval_key, config.data, config.mode)
    return state, jax.random.key_data(data_key), evaluation

  def _evaluate(self, params, inputs, targets):
    """Scores `params` on windows `[W, B, T]` (see echo.evaluate).

    Returns:
      (dict of scalars `loss` and `accuracy`, what echo.png shows of row 0 in
      the first E windows: a dict of `inputs` and `targets` `[E, T]`, the
      predicted `probabilities` `[E, T, C]` and `knowable` `[E, T]`).
    """
    config = self.config
    scores = evaluate_lib.evaluate(
      self.model,
      params,
      inputs,
      targets,
      config.mode,
      config.data.echo_step,
    )
    logits = evaluate_lib.predict(
      self.model, params, inputs[:_ECHO_WINDOWS], config.mode
    )
    num_windows, _, steps = logits.shape[:3]
    knowable = data_lib.knowable(
      num_windows * steps, steps, config.data.echo_step, config.mode
    )
    picture = {
      'inputs': inputs[:num_windows, 0],
      'targets': targets[:num_windows, 0],
      'probabilities': jax.nn.softmax(logits[:, 0]),
      'knowable': knowable.reshape(num_windows, steps),
    }
    return scores, picture

  def checkpoint_target(self):
    """Shapes and dtypes of what a checkpoint holds, from this config."""
    return jax.eval_shape(
      lambda: checkpoint_arrays(
        *self._start(self.config.seed)[:2],
        self.model.initial_carries(self.config.data.batch_size),
      )
    )

  def _train_chunk(self, state, carries, inputs, targets, start):
    """Trains windows [start, start + chunk) of one epoch's `[W, B, T]`.

    Windows past the epoch's end (when `chunk` does not divide it) change
    nothing and report a NaN loss.
    """
    padding = -self.windows_per_epoch % self.chunk
    if padding:
      pad = ((0, padding), (0, 0), (0, 0))
      inputs, targets = jnp.pad(inputs, pad), jnp.pad(targets, pad)
    inputs, targets = (
      jax.lax.dynamic_slice_in_dim(x, start, self.chunk)
      for x in (inputs, targets)
    )
    if not padding:
      return train_windows(
        self.model,
        self.optimizer,
        self.config.mode,
        state,
        carries,
        inputs,
        targets,
      )

    def body(loop, window):
      index, window_inputs, window_targets = window
      new = train_windows(
        self.model,
        self.optimizer,
        self.config.mode,
        *loop,
        window_inputs[None],
        window_targets[None],
      )
      valid = index < self.windows_per_epoch
      state, carries = jax.tree.map(
        lambda n, o: jnp.where(valid, n, o), new[:2], loop
      )
      return (state, carries), jnp.where(valid, new[2][0], jnp.nan)

    indices = start + jnp.arange(self.chunk)
    (state, carries), losses = jax.lax.scan(
      body, (state, carries), (indices, inputs, targets)
    )
    return state, carries, losses

  def _epoch_windows(self, data_key, epoch):
    """The epoch's (inputs, targets) `[W, B, T]`, from the raw data key."""
    key = epoch_data_key(
      jax.random.wrap_key_data(data_key),
      epoch,
      self.config.data.new_series_each_epoch,
    )
    return data_lib.make_windows(key, self.config.data, self.config.mode)


class Diverged(FloatingPointError):
  """The loss became NaN or infinite; the state that made it was not saved.

  Attributes:
    epoch, window, step: where the first such loss was.
    checkpoint_step: the newest checkpoint, all finite; None if none exists.
    learning_rate: the learning rate of the run.
  """

  def __init__(
    self,
    epoch,
    window,
    step,
    loss,
    checkpoint_step,
    learning_rate,
    quantity='loss',
  ):
    self.epoch, self.window, self.step = epoch, window, step
    self.checkpoint_step = checkpoint_step
    self.learning_rate = learning_rate
    if checkpoint_step is None:
      kept = 'there is no checkpoint yet'
    else:
      kept = f'the newest checkpoint is step {checkpoint_step}'
    super().__init__(
      f'{quantity} {loss} at epoch {epoch}, window {window} (step {step}); '
      f'stopped without saving it, {kept}. Try a lower learning rate than '
      f'config.train.learning_rate={learning_rate:g}'
    )


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir`, or goes on with the run saved there.

  Logs `New data, epoch E` as each epoch starts and, every `log_every`
  windows, `Step S Batch loss L (N windows/s, H:MM:SS left)` with the loss of
  window S. After each epoch it evaluates on a series never trained on.
  Writes to workdir: config.json, metrics.jsonl, TensorBoard event files,
  checkpoints/ and, when the run is complete, loss.png and echo.png.

  A workdir with checkpoints is resumed from the newest one and goes on as if
  it had never stopped. SIGINT (Ctrl-C) or SIGTERM stops the run after the
  chunk being trained, with a checkpoint of it.

  Args:
    config: a ConfigDict as made by configs/default.py.
    workdir: folder for the run's outputs; made if missing.

  Returns:
    dict with `losses` (float64 `[num_epochs, windows_per_epoch]`, NaN for
    windows not trained by this call), the final `state`, `traces` and
    `eval_traces` (times the chunk and the evaluation were traced),
    `progress` (a checkpoint.Progress: where the run stands) and `stopped_by`
    ('SIGINT' or 'SIGTERM' if a signal stopped it, else None).

  Raises:
    ConfigError: before anything is built or written, if a field of `config`
      cannot work.
    WorkdirError: if workdir holds a run with a config that differs in a field
      that changes what is computed (see echo.workdir).
    CheckpointMismatch: if its checkpoint does not fit `config`.
    Diverged: when a loss is NaN or infinite, after the chunk that made it.
  """
  validate_lib.validate(config)
  with workdir_lib.lock(workdir):
    workdir_lib.prepare(config, workdir)
    # Signals are turned into a stop request from here on, so one that comes
    # during start-up, the last checkpoint or the pictures lets the run reach
    # a clean end instead of killing it half way.
    with stop_lib.StopSignals() as signals:
      return _train(config, workdir, signals)


def _train(config, workdir, signals):
  """train_and_evaluate, once the workdir is locked and prepared."""
  # matplotlib takes half a second to import and is needed only for the
  # pictures at the end: load it meanwhile, while XLA compiles and trains.
  threading.Thread(
    target=importlib.import_module, args=('echo.plots',), daemon=True
  ).start()
  trainer = _Trainer(config)
  num_windows = trainer.windows_per_epoch
  fresh_state, data_key, evaluation = trainer.start(config.seed)
  losses = np.full((config.num_epochs, num_windows), np.nan)
  stopped_by = None

  directory = os.path.join(workdir, 'checkpoints')
  with checkpoint_lib.Checkpoints(directory, config.checkpoint.keep) as saves:
    state, carries, data_key, progress = _start(
      trainer, saves, fresh_state, data_key
    )
    if progress.epoch >= config.num_epochs:
      logging.info(
        '%s already holds the complete run (%d epochs trained); nothing to do',
        workdir,
        progress.epoch,
      )
      if not os.path.exists(os.path.join(workdir, 'echo.png')):
        _, picture = trainer.evaluate(state.params, *evaluation)
        _draw(workdir, trainer, picture)
      return _result(trainer, losses, state, progress, stopped_by)

    # Written once the saved run is known to be readable and not yet done,
    # so neither a failed start nor a shorter request rewrites its record.
    workdir_lib.write_config(config, workdir)
    newest = saves.latest_step()
    if newest is not None:
      logging.info(
        'Resuming at epoch %d, window %d (step %d) from %s',
        progress.epoch,
        progress.window,
        progress.step,
        directory,
      )
    elif os.path.exists(metrics_lib.metrics_path(workdir)):
      logging.info(
        'No checkpoint in %s: training again from step 0, and writing '
        'metrics.jsonl again',
        directory,
      )
    pace = progress_lib.Pace(config.num_epochs * num_windows - progress.step)
    with metrics_lib.MetricsWriter(
      workdir, progress.metrics_lines, progress.step
    ) as metrics:
      chunks = _chunks(trainer, state, carries, data_key, progress)
      for epoch, start, state, carries, chunk_losses in chunks:
        stop = min(start + trainer.chunk, num_windows)
        chunk_losses = np.asarray(chunk_losses)[: stop - start]
        losses[epoch, start:stop] = chunk_losses
        learning_rate = float(state.opt_state.hyperparams['learning_rate'])
        _check_finite(
          chunk_losses, epoch, start, trainer, newest, learning_rate
        )

        _log_chunk(
          trainer, metrics, pace, epoch, start, chunk_losses, learning_rate
        )
        if stop == num_windows:
          picture, eval_loss = _evaluate(
            trainer, state.params, evaluation, epoch, metrics
          )
          _check_finite(
            np.array([eval_loss]),
            epoch,
            num_windows - 1,
            trainer,
            newest,
            learning_rate,
            quantity='evaluation loss',
          )

        progress = checkpoint_lib.Progress(
          epoch=epoch + stop // num_windows,
          window=stop % num_windows,
          step=epoch * num_windows + stop,
          metrics_lines=metrics.lines,
        )
        # A signal during the last chunk lets the run end as usual.
        stopping = signals.requested and progress.epoch < config.num_epochs
        if stopping or _checkpoint_due(trainer, progress):
          arrays = jax.device_get(checkpoint_arrays(state, data_key, carries))
          _check_finite_state(
            arrays['state'], epoch, stop, trainer, newest, learning_rate
          )
          saves.save(arrays, progress)
          metrics.flush()
          newest = progress.step
        if stopping:
          stopped_by = signals.name
          break

  if not stopped_by:
    _draw(workdir, trainer, picture)
  return _result(trainer, losses, state, progress, stopped_by)


def _start(trainer, saves, state, data_key):
  """(state, carries, raw data key, Progress) to train from.

  The newest checkpoint in `saves`, read into arrays shaped like the fresh
  `state` and raw `data_key` of the run; or those, at step 0, if there is
  none.
  """
  carries = trainer.model.initial_carries(trainer.config.data.batch_size)
  saved = saves.latest_step() is not None and saves.restore(
    checkpoint_arrays(state, data_key, carries)
  )
  if not saved:
    return state, carries, data_key, checkpoint_lib.Progress(0, 0, 0, 0)
  run, progress = saved
  return run['state'], run['carries'], run['data_key'], progress


def _chunks(trainer, state, carries, data_key, progress):
  """Trains chunk after chunk from `progress` to the end of the run.

  Yields:
    (epoch, first window, state, carries, losses `[chunk]`) after each chunk.
  """
  config = trainer.config
  for epoch in range(progress.epoch, config.num_epochs):
    logging.info('New data, epoch %d', epoch)
    inputs, targets = trainer.epoch_windows(data_key, epoch)
    first = progress.window if epoch == progress.epoch else 0
    if not first:
      carries = trainer.model.initial_carries(config.data.batch_size)
    for start in range(first, trainer.windows_per_epoch, trainer.chunk):
      state, carries, losses = trainer.train_chunk(
        state, carries, inputs, targets, start
      )
      yield epoch, start, state, carries, losses


def _log_chunk(trainer, metrics, pace, epoch, start, losses, learning_rate):
  """The progress line and metrics record of the chunk from window `start`.

  Args:
    trainer: the run's _Trainer.
    metrics: the run's MetricsWriter.
    pace: the run's Pace.
    epoch: the chunk's epoch.
    start: its first window in the epoch.
    losses: float `[windows]`, the loss of each of its windows.
    learning_rate: the optimizer's.
  """
  windows_per_sec, seconds_left = pace.chunk_done(len(losses))
  logging.info(
    'Step %d Batch loss %.6g (%.0f windows/s, %s left)',
    start,
    losses[0],
    windows_per_sec,
    progress_lib.format_duration(seconds_left),
  )
  metrics.write(
    {
      'epoch': epoch,
      'window': start,
      'step': epoch * trainer.windows_per_epoch + start,
      'loss': float(losses[0]),
      'mean_loss': float(losses.mean()),
      'windows_per_sec': windows_per_sec,
      'learning_rate': learning_rate,
    }
  )


def _check_finite(
  losses, epoch, start, trainer, newest, learning_rate, quantity='loss'
):
  """Raises Diverged at the first NaN or infinite loss of a chunk."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    window = start + int(bad[0])
    step = epoch * trainer.windows_per_epoch + window
    raise Diverged(
      epoch, window, step, losses[bad[0]], newest, learning_rate, quantity
    )


def _check_finite_state(state, epoch, stop, trainer, newest, learning_rate):
  """Raises Diverged if the last update of a chunk, which ended before
  window `stop`, left a parameter or optimizer value NaN or infinite.

  Each window's loss is taken before its update, so finite losses do not
  show that the state they leave is finite too.
  """
  if all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state)):
    return
  window = stop - 1
  raise Diverged(
    epoch,
    window,
    epoch * trainer.windows_per_epoch + window,
    'not finite',
    newest,
    learning_rate,
    quantity='parameters or optimizer state',
  )


def _checkpoint_due(trainer, progress):
  """Whether to save after the chunk that led to `progress`."""
  config = trainer.config
  if progress.epoch == config.num_epochs:
    return True
  # Counted from the start of the run, so a resumed run saves where an
  # uninterrupted one would.
  chunks_per_epoch = -(-trainer.windows_per_epoch // trainer.chunk)
  chunks = progress.epoch * chunks_per_epoch + progress.window // trainer.chunk
  return chunks % config.checkpoint.every_chunks == 0


def _result(trainer, losses, state, progress, stopped_by):
  return {
    'losses': losses,
    'state': state,
    'traces': trainer.traces,
    'eval_traces': trainer.eval_traces,
    'progress': progress,
    'stopped_by': stopped_by,
  }


def _evaluate(trainer, params, evaluation, epoch, metrics):
  """Scores `params` on the evaluation windows; logs and records it.

  A NaN or infinite loss is returned without being recorded.

  Returns:
    (what echo.png shows (see _Trainer._evaluate), the evaluation loss).
  """
  scores, picture = trainer.evaluate(params, *evaluation)
  loss, accuracy = float(scores['loss']), float(scores['accuracy'])
  if not np.isfinite(loss):
    return picture, loss
  logging.info(
    'Evaluation after epoch %d: loss %.6g, accuracy %.4f',
    epoch,
    loss,
    accuracy,
  )
  metrics.write(
    {
      'epoch': epoch,
      'step': (epoch + 1) * trainer.windows_per_epoch,
      'eval_loss': loss,
      'eval_accuracy': accuracy,
    }
  )
  return picture, loss


def _draw(workdir, trainer, picture):
  """Writes loss.png and echo.png to workdir.

  Args:
    workdir: the run's folder, with its metrics.jsonl.
    trainer: the run's _Trainer.
    picture: what echo.png shows (see _Trainer._evaluate).
  """
  from echo import plots as plots_lib  # noqa: PLC0415 - loaded meanwhile.

  plots_lib.plot_losses(
    os.path.join(workdir, 'loss.png'),
    metrics_lib.read(workdir),
    trainer.windows_per_epoch,
  )
  picture = {name: np.asarray(values) for name, values in picture.items()}
  plots_lib.plot_echo(
    os.path.join(workdir, 'echo.png'),
    **picture,
    echo_step=trainer.config.data.echo_step,
  )
  logging.info('Pictures: %s and %s', 'loss.png', 'echo.png')
