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

import jax
import jax.numpy as jnp
from flax import linen as nn

# TF1's default initializer for the gate kernels and the embedding.
_GLOROT = nn.initializers.glorot_uniform()


class Affine(nn.Module):
  """inputs @ kernel + bias, kernel `[in, features]` (glorot), bias zeros."""

  features: int

  @nn.compact
  def __call__(self, inputs):
    kernel = self.param('kernel', _GLOROT, (inputs.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return inputs @ kernel + bias


class LSTMCell(nn.Module):
  """TF1's BasicLSTMCell: one affine map of [x, h] to gates i, g, f, o.

  Carry: (c, h), each `[B, H]`. Parameters: (in + H) * 4H + 4H.
  """

  features: int
  forget_bias: float = 1.0

  @nn.compact
  def __call__(self, carry, inputs):
    c, h = carry
    gates = Affine(4 * self.features, name='gates')(
      jnp.concatenate([inputs, h], -1)
    )
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    forget = jax.nn.sigmoid(f + self.forget_bias)
    c = c * forget + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jnp.tanh(c) * jax.nn.sigmoid(o)
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
  if cell == 'lstm':
    return jnp.zeros((batch_size, features)), jnp.zeros((batch_size, features))
  return jnp.zeros((batch_size, features))


def cell_param_count(cell, input_size, features):
  """Parameters of one layer, by the formulas in the cell docstrings."""
  affine = (input_size + features) * features + features
  return {'lstm': 4, 'gru': 3, 'simple': 1}[cell] * affine


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
    logits = nn.Dense(self.num_classes, name='head')(outputs)
    return carries, logits

  def initial_carries(self, batch_size):
    """Zero state for every layer: a tuple of per-layer carries."""
    return tuple(
      initial_carry(self.cell, batch_size, self.state_size)
      for _ in range(self.num_layers)
    )
