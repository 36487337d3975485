"""Training with truncated backpropagation through time (TBPTT).

Shapes: W windows, B batch, T truncated_length (steps per window).

`train_step` is pure: one optimizer update on one window, returning the
carries after the window's last step through `lax.stop_gradient`, so no
gradient crosses a window edge. `train_windows` scans it over many windows in
one compiled loop. `train_and_evaluate` runs the epochs: the host loop visits
one chunk of `log_every` windows at a time and logs between chunks.
"""

import functools
import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from echo import data as data_lib
from echo import model as model_lib
from echo import validate as validate_lib


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


class _Trainer:
  """Compiled pieces of one run, built once from its config."""

  def __init__(self, config):
    self.config = config
    self.model = make_model(config)
    self.optimizer = make_optimizer(config.train)
    self.windows_per_epoch = data_lib.num_windows(config.data)
    self.chunk = min(config.train.log_every, self.windows_per_epoch)
    self.traces = 0
    # Jitted even where tiny: each eager op would compile a program of its own.
    self.run_keys = jax.jit(run_keys)
    self.create_state = jax.jit(
      functools.partial(
        create_state,
        model=self.model,
        optimizer=self.optimizer,
        batch_size=config.data.batch_size,
        truncated_length=config.data.truncated_length,
      )
    )
    self.epoch_windows = jax.jit(self._epoch_windows)
    self.train_chunk = jax.jit(self._train_chunk, donate_argnums=(0, 1))

  def _epoch_windows(self, data_key, epoch):
    """The epoch's (inputs, targets) `[W, B, T]`."""
    key = epoch_data_key(
      data_key, epoch, self.config.data.new_series_each_epoch
    )
    return data_lib.make_windows(key, self.config.data, self.config.mode)

  def _train_chunk(self, state, carries, inputs, targets, start):
    """Trains windows [start, start + chunk) of one epoch's `[W, B, T]`.

    Windows past the epoch's end (when `chunk` does not divide it) change
    nothing and report a NaN loss.
    """
    self.traces += 1
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


def train_and_evaluate(config, workdir):
  """Trains `config` and writes `config.json` and `metrics.jsonl` to workdir.

  Logs `New data, epoch E` as each epoch starts and, every `log_every`
  windows, `Step S Batch loss L` with the loss of window S and windows/s.

  Args:
    config: a ConfigDict as made by configs/default.py.
    workdir: folder for the run's outputs; made if missing.

  Returns:
    dict with `losses` (float64 `[num_epochs, windows_per_epoch]`), the
    final `state`, and `traces` (times the chunk function was traced).

  Raises:
    ConfigError: before anything is built or written, if a field of `config`
      cannot work.
  """
  validate_lib.validate(config)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(metrics_path):
    raise FileExistsError(
      f'{workdir} already holds a run ({metrics_path}); '
      'choose another --workdir'
    )
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')

  use_compile_cache(config.compile_cache_dir)
  trainer = _Trainer(config)
  init_key, data_key, _ = trainer.run_keys(config.seed)
  state = trainer.create_state(init_key)
  num_windows = trainer.windows_per_epoch
  losses = np.zeros((config.num_epochs, num_windows))

  with open(metrics_path, 'a') as metrics_file:
    for epoch in range(config.num_epochs):
      logging.info('New data, epoch %d', epoch)
      inputs, targets = trainer.epoch_windows(data_key, epoch)
      carries = trainer.model.initial_carries(config.data.batch_size)
      started = time.perf_counter()
      for start in range(0, num_windows, trainer.chunk):
        state, carries, chunk_losses = trainer.train_chunk(
          state, carries, inputs, targets, start
        )
        chunk_losses = np.asarray(chunk_losses)
        stop = min(start + trainer.chunk, num_windows)
        losses[epoch, start:stop] = chunk_losses[: stop - start]
        now = time.perf_counter()
        windows_per_sec = (stop - start) / (now - started)
        started = now
        loss = float(chunk_losses[0])
        logging.info(
          'Step %d Batch loss %.6g (%.0f windows/s)',
          start,
          loss,
          windows_per_sec,
        )
        record = {
          'epoch': epoch,
          'window': start,
          'step': epoch * num_windows + start,
          'loss': loss,
          'mean_loss': float(chunk_losses[: stop - start].mean()),
          'windows_per_sec': windows_per_sec,
          'learning_rate': float(state.opt_state.hyperparams['learning_rate']),
        }
        metrics_file.write(json.dumps(record) + '\n')
        metrics_file.flush()

  return {
    'losses': losses,
    'state': state,
    'traces': trainer.traces,
  }
