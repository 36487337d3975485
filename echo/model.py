"""A stacked recurrent network whose state is passed in and handed back.

Shapes: B batch, T time steps, E embedding width (= H), H state size,
C classes (symbols).

  model = StackedRNN(num_classes=2, state_size=4, num_layers=3)
  carries = model.initial_carries(batch_size=5)
  params = model.init(key, carries, tokens)['params']
  carries, logits = model.apply({'params': params}, carries, tokens)

`tokens` is int `[B, T]` and `logits` is `[B, T, C]`. Each layer is its own
cell with its own parameters, under `params['rnn']['layer_i']`. The model
keeps no hidden state: the carries after the last step are returned, and the
caller decides whether to feed them to the next window.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# TF1's default initializer for the gate kernels and the embedding.
_GLOROT = nn.initializers.glorot_uniform()


# Kernels up to this many entries are multiplied by `small_matmul`.
SMALL_KERNEL = 512


def small_matmul(inputs, kernel):
  """inputs `[..., K]` @ kernel `[K, N]`, fused with its neighbours if small.

  On XLA's CPU backend a dot is a library call of its own, which for the
  gate kernels of a few units costs more than the arithmetic. Written as a
  broadcast product and a sum, it fuses with the elementwise gate math around
  it, and the autodiff backward fuses too (2x faster at 4 units; slower from
  16 units on, see benchmarks/README.md). The sums differ from a dot's only
  in rounding.
  """
  if kernel.shape[-2] * kernel.shape[-1] > SMALL_KERNEL:
    return inputs @ kernel
  return (inputs[..., :, None] * kernel[..., None, :, :]).sum(-2)


def _affine_params(module, in_features, features, kernel_init=_GLOROT):
  """Declares `kernel` `[in, features]` and `bias` (zeros) in `module`."""
  kernel = module.param('kernel', kernel_init, (in_features, features))
  bias = module.param('bias', nn.initializers.zeros_init(), (features,))
  return kernel, bias


class Affine(nn.Module):
  """inputs @ kernel + bias: kernel `[in, features]`, bias zeros."""

  features: int
  kernel_init: nn.initializers.Initializer = _GLOROT

  @nn.compact
  def __call__(self, inputs):
    kernel, bias = _affine_params(
      self, inputs.shape[-1], self.features, self.kernel_init
    )
    return small_matmul(inputs, kernel) + bias


def _is_candidate(features):
  """Bool `[4H]`: True on gate g (tanh), False on i, f, o (sigmoid)."""
  return np.arange(4 * features) // features == 1


def _lstm_forward(kernel, bias, inputs, c, h, forget_bias):
  """One LSTM step; also returns what the hand-written backward needs."""
  features = h.shape[-1]
  xh = jnp.concatenate([inputs, h], -1)
  z = small_matmul(xh, kernel) + bias[..., None, :]
  # Gates i, g, f, o side by side: one activation pass over all four.
  shift = np.where(np.arange(4 * features) // features == 2, forget_bias, 0.0)
  gates = jnp.where(
    _is_candidate(features), jnp.tanh(z), jax.nn.sigmoid(z + shift)
  )
  i, g, f, o = jnp.split(gates, 4, axis=-1)
  c = c * f + i * g
  tanh_c = jnp.tanh(c)
  return (c, tanh_c * o), (xh, gates, tanh_c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def lstm_step(kernel, bias, inputs, c, h, forget_bias):
  """One step of TF1's BasicLSTMCell, with a hand-written backward pass.

  Args:
    kernel: `[E + H, 4H]`, gates i, g, f, o side by side.
    bias: `[4H]`.
    inputs: `[B, E]`.
    c: cell state `[B, H]`.
    h: output state `[B, H]`.
    forget_bias: added to the forget gate before its sigmoid.

  Returns:
    (c, h) after the step.

  Autodiff of the step saves a dozen small intermediates per step, and a scan
  over time stores each with kernels of its own; this backward keeps one
  packed array per step and computes the gradients in a few fused passes
  (1.6x faster per window at the default sizes, see benchmarks/README.md).
  The values are the same formulas.
  """
  return _lstm_forward(kernel, bias, inputs, c, h, forget_bias)[0]


def _lstm_step_forward(kernel, bias, inputs, c, h, forget_bias):
  state, (xh, gates, tanh_c) = _lstm_forward(
    kernel, bias, inputs, c, h, forget_bias
  )
  return state, (kernel, jnp.concatenate([xh, gates, tanh_c, c], -1))


def _lstm_step_backward(forget_bias, saved, cotangents):
  del forget_bias  # Only shifts the forget gate; its derivative is 1.
  kernel, packed = saved
  features = kernel.shape[-1] // 4
  xh, gates, tanh_c, c = jnp.split(
    packed, np.cumsum([kernel.shape[-2], 4 * features, features]), axis=-1
  )
  d_new_c, d_h = cotangents
  i, g, f, o = jnp.split(gates, 4, axis=-1)
  d_c = d_new_c + d_h * o * (1 - tanh_c * tanh_c)
  d_gates = jnp.concatenate([d_c * g, d_c * i, d_c * c, d_h * tanh_c], -1)
  d_z = d_gates * jnp.where(
    _is_candidate(c.shape[-1]), 1 - gates * gates, gates * (1 - gates)
  )
  d_kernel = small_matmul(jnp.swapaxes(xh, -1, -2), d_z)
  d_xh = small_matmul(d_z, jnp.swapaxes(kernel, -1, -2))
  inputs_size = xh.shape[-1] - c.shape[-1]
  return (
    d_kernel,
    d_z.sum(-2),
    d_xh[..., :inputs_size],
    d_c * f,
    d_xh[..., inputs_size:],
  )


lstm_step.defvjp(_lstm_step_forward, _lstm_step_backward)


class GatesParams(nn.Module):
  """An Affine's kernel `[in, features]` and bias, returned unapplied."""

  features: int

  @nn.compact
  def __call__(self, in_features):
    return _affine_params(self, in_features, self.features)


class LSTMCell(nn.Module):
  """TF1's BasicLSTMCell: one affine map of [x, h] to gates i, g, f, o.

  Carry: (c, h), each `[B, H]`. Parameters: (in + H) * 4H + 4H, under
  `gates/kernel` and `gates/bias`.
  """

  features: int
  forget_bias: float = 1.0

  @nn.compact
  def __call__(self, carry, inputs):
    c, h = carry
    gates = GatesParams(4 * self.features, name='gates')(
      inputs.shape[-1] + self.features
    )
    c, h = lstm_step(*gates, inputs, c, h, self.forget_bias)
    return (c, h), h


class GRUCell(nn.Module):
  """TF1's GRUCell: gates r, u from [x, h], candidate from [x, r * h].

  Carry: h `[B, H]`. Parameters: 3 * ((in + H) * H + H).
  """

  features: int

  @nn.compact
  def __call__(self, carry, inputs):
    h = carry
    gates = Affine(2 * self.features, name='gates')(
      jnp.concatenate([inputs, h], -1)
    )
    r, u = jnp.split(jax.nn.sigmoid(gates), 2, axis=-1)
    candidate = jnp.tanh(
      Affine(self.features, name='candidate')(
        jnp.concatenate([inputs, r * h], -1)
      )
    )
    h = u * h + (1 - u) * candidate
    return h, h


class SimpleCell(nn.Module):
  """Elman cell: h = tanh([x, h] @ kernel + bias).

  Carry: h `[B, H]`. Parameters: (in + H) * H + H.
  """

  features: int

  @nn.compact
  def __call__(self, carry, inputs):
    h = jnp.tanh(
      Affine(self.features, name='affine')(jnp.concatenate([inputs, carry], -1))
    )
    return h, h


def make_cell(cell, features, forget_bias=1.0, name=None):
  """The cell module named by `cell`: 'lstm', 'gru' or 'simple'."""
  if cell == 'lstm':
    return LSTMCell(features, forget_bias, name=name)
  if cell == 'gru':
    return GRUCell(features, name=name)
  if cell == 'simple':
    return SimpleCell(features, name=name)
  raise ValueError(f"unknown cell {cell!r}: use 'lstm', 'gru' or 'simple'")


def initial_carry(cell, batch_size, features):
  """Zero state of one layer: (c, h) for 'lstm', h for 'gru' and 'simple'."""
  # numpy zeros: made without compiling anything, and constants under jit.
  if cell == 'lstm':
    return (
      np.zeros((batch_size, features), np.float32),
      np.zeros((batch_size, features), np.float32),
    )
  return np.zeros((batch_size, features), np.float32)


def cell_param_count(cell, input_size, features):
  """Parameters of one layer, by the formulas in the cell docstrings."""
  affine = (input_size + features) * features + features
  return {'lstm': 4, 'gru': 3, 'simple': 1}[cell] * affine


def kernels_are_small(num_classes, state_size, cell):
  """Whether every kernel of StackedRNN goes through the fused small matmul."""
  widest = {'lstm': 4, 'gru': 2, 'simple': 1}[cell] * state_size
  largest = max(2 * state_size * widest, state_size * num_classes)
  return largest <= SMALL_KERNEL


def param_count(num_classes, state_size, num_layers, cell):
  """Parameters of StackedRNN: embedding, every layer, dense head."""
  embedding = num_classes * state_size
  layers = num_layers * cell_param_count(cell, state_size, state_size)
  head = state_size * num_classes + num_classes
  return embedding + layers + head


class _Layers(nn.Module):
  """One time step through every layer: carries, x `[B, E]` -> carries, y."""

  cell: str
  state_size: int
  num_layers: int
  forget_bias: float

  @nn.compact
  def __call__(self, carries, x):
    new_carries = []
    for index, carry in enumerate(carries):
      layer = make_cell(
        self.cell, self.state_size, self.forget_bias, name=f'layer_{index}'
      )
      carry, x = layer(carry, x)
      new_carries.append(carry)
    return tuple(new_carries), x


class StackedRNN(nn.Module):
  """Embedding, `num_layers` recurrent cells scanned over time, dense head.

  Attributes:
    num_classes: symbols in and classes out (C).
    state_size: units per layer and embedding width (H).
    num_layers: stacked cells, each with its own parameters.
    cell: 'lstm', 'gru' or 'simple'.
    forget_bias: added to the LSTM forget gate.
    unroll: time steps per iteration of the scan over the window; a value
      >= T unrolls the window completely.
  """

  num_classes: int
  state_size: int
  num_layers: int
  cell: str = 'lstm'
  forget_bias: float = 1.0
  unroll: int = 1

  @nn.compact
  def __call__(self, carries, tokens):
    """carries, int `[B, T]` -> carries, logits `[B, T, C]`."""
    x = nn.Embed(
      self.num_classes, self.state_size, embedding_init=_GLOROT, name='embed'
    )(tokens)
    scan = nn.scan(
      _Layers,
      variable_broadcast='params',
      split_rngs={'params': False},
      in_axes=1,
      out_axes=1,
      unroll=self.unroll,
    )
    carries, outputs = scan(
      self.cell,
      self.state_size,
      self.num_layers,
      self.forget_bias,
      name='rnn',
    )(tuple(carries), x)
    logits = Affine(
      self.num_classes, nn.initializers.lecun_normal(), name='head'
    )(outputs)
    return carries, logits

  def initial_carries(self, batch_size):
    """Zero state for every layer: a tuple of per-layer carries."""
    return tuple(
      initial_carry(self.cell, batch_size, self.state_size)
      for _ in range(self.num_layers)
    )
