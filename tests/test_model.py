"""The stacked network: parameter layout, carries, and where gradients stop."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from echo import model as model_lib
from echo import train

CELLS = ['lstm', 'gru', 'simple']


def _setup(cell, num_layers=3, state_size=4, num_classes=3, batch=5, steps=6):
  model = model_lib.StackedRNN(num_classes, state_size, num_layers, cell=cell)
  tokens = jax.random.randint(
    jax.random.key(1), (batch, 2 * steps), 0, num_classes
  )
  carries = model.initial_carries(batch)
  params = jax.jit(model.init)(jax.random.key(0), carries, tokens[:, :steps])[
    'params'
  ]
  return model, params, carries, tokens


@pytest.mark.parametrize('cell', CELLS)
def test_one_parameter_subtree_per_layer_and_count_matches_formula(cell):
  model, params, _, _ = _setup(cell, num_layers=3, state_size=5, num_classes=3)
  assert set(params) == {'embed', 'rnn', 'head'}
  assert sorted(params['rnn']) == ['layer_0', 'layer_1', 'layer_2']
  layers = [params['rnn'][f'layer_{i}'] for i in range(3)]
  # Separate parameters, not one set shared by every layer.
  flat = [jax.flatten_util.ravel_pytree(layer)[0] for layer in layers]
  assert not np.allclose(flat[0], flat[1])
  assert not np.allclose(flat[1], flat[2])
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == model_lib.param_count(3, 5, 3, cell)
  for layer in layers:
    assert sum(
      x.size for x in jax.tree.leaves(layer)
    ) == model_lib.cell_param_count(cell, 5, 5)


def test_notebook_sizes_have_450_parameters():
  assert model_lib.param_count(2, 4, 3, 'lstm') == 450


@pytest.mark.parametrize('cell', CELLS)
def test_two_windows_with_carry_handed_on_equal_one_sequence(cell):
  model, params, carries, tokens = _setup(cell)
  variables = {'params': params}
  apply = jax.jit(model.apply)
  whole_carries, whole_logits = apply(variables, carries, tokens)
  middle, first = apply(variables, carries, tokens[:, :6])
  end_carries, second = apply(variables, middle, tokens[:, 6:])
  np.testing.assert_allclose(
    np.concatenate([first, second], axis=1), whole_logits, atol=1e-6
  )
  for got, want in zip(
    jax.tree.leaves(end_carries), jax.tree.leaves(whole_carries), strict=True
  ):
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize('cell', CELLS)
def test_carries_change_the_output(cell):
  model, params, carries, tokens = _setup(cell)
  ones = jax.tree.map(jnp.ones_like, carries)
  apply = jax.jit(model.apply)
  _, from_zeros = apply({'params': params}, carries, tokens)
  _, from_ones = apply({'params': params}, ones, tokens)
  assert not np.allclose(from_zeros, from_ones)


def _second_window_loss(stop_gradient):
  """Loss of window 2 as a function of the embedding used by window 1."""
  model, params, carries, tokens = _setup('lstm', num_classes=2)
  optimizer = optax.adagrad(0.3)
  state = train.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
  )
  first, second = tokens[:, :6], tokens[:, 6:]

  def loss(first_embedding):
    first_params = {
      **params,
      'embed': {'embedding': first_embedding},
    }
    if stop_gradient:
      step_state = state.replace(params=first_params)
      _, after_first, _ = train.train_step(
        model, optimizer, step_state, carries, first, first
      )
    else:
      after_first, _ = model.apply({'params': first_params}, carries, first)
    value, _ = train.window_loss(params, model, after_first, second, second)
    return value

  return jax.jit(jax.grad(loss))(params['embed']['embedding'])


def test_no_gradient_crosses_a_window_edge():
  np.testing.assert_array_equal(_second_window_loss(stop_gradient=True), 0.0)
  # Without the stop, window 1's inputs do reach window 2's loss.
  assert np.abs(_second_window_loss(stop_gradient=False)).max() > 1e-6


def _plain_lstm_step(kernel, bias, inputs, c, h, forget_bias):
  """The LSTM step written plainly, differentiated by JAX."""
  gates = jnp.concatenate([inputs, h], -1) @ kernel + bias
  i, g, f, o = jnp.split(gates, 4, axis=-1)
  c = c * jax.nn.sigmoid(f + forget_bias) + jax.nn.sigmoid(i) * jnp.tanh(g)
  return c, jnp.tanh(c) * jax.nn.sigmoid(o)


@pytest.mark.parametrize('features', [4, 16])  # Fused and library matmuls.
def test_hand_written_lstm_backward_matches_autodiff(features):
  keys = jax.random.split(jax.random.key(7), 6)
  inputs_size, batch = 3, 5
  args = (
    jax.random.normal(keys[0], (inputs_size + features, 4 * features)),
    jax.random.normal(keys[1], (4 * features,)),
    jax.random.normal(keys[2], (batch, inputs_size)),
    jax.random.normal(keys[3], (batch, features)),
    jax.random.normal(keys[4], (batch, features)),
  )
  weights = jax.random.normal(keys[5], (2, batch, features))

  def loss(step, *args):
    c, h = step(*args, 0.7)
    return (weights[0] * c).sum() + (weights[1] * jnp.sin(h)).sum()

  argnums = tuple(range(1, 6))
  fast = jax.jit(jax.grad(loss, argnums), static_argnums=0)(
    model_lib.lstm_step, *args
  )
  plain = jax.jit(jax.grad(loss, argnums), static_argnums=0)(
    _plain_lstm_step, *args
  )
  np.testing.assert_allclose(
    model_lib.lstm_step(*args, 0.7), _plain_lstm_step(*args, 0.7), atol=1e-6
  )
  for got, want in zip(fast, plain, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  'num_classes, state_size, cell',
  [
    (2, 4, 'lstm'),
    (2, 8, 'lstm'),  # Gate kernel 16 x 32: exactly the limit.
    (2, 9, 'lstm'),
    (300, 4, 'lstm'),  # The head, 4 x 300, is over it.
    (2, 11, 'gru'),
    (2, 12, 'gru'),
    (2, 16, 'simple'),
    (2, 17, 'simple'),
  ],
)
def test_kernels_are_small_says_whether_any_library_matmul_is_left(
  num_classes, state_size, cell
):
  model = model_lib.StackedRNN(num_classes, state_size, 2, cell=cell)
  carries = model.initial_carries(3)
  tokens = jnp.zeros((3, 5), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), carries, tokens)

  def loss(params):
    return model.apply(params, carries, tokens)[1].sum()

  program = jax.jit(jax.grad(loss)).lower(params).as_text()
  small = model_lib.kernels_are_small(num_classes, state_size, cell)
  assert small == ('dot_general' not in program)
