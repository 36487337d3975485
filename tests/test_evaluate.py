"""Evaluation: loss and accuracy on knowable positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from echo import data, evaluate, train


class _Oracle:
  """Stands in for the model: logits that put all weight on `answer`."""

  def __init__(self, answer, num_classes=2):
    self.answer = answer
    self.num_classes = num_classes

  def initial_carries(self, batch_size):
    return (jnp.zeros((batch_size,), jnp.int32),)

  def apply(self, variables, carries, window):
    (counter,) = carries
    del variables
    logits = 20.0 * jax.nn.one_hot(self.answer(window), self.num_classes)
    return (counter + 1,), logits


@pytest.mark.parametrize('mode', ['carry', 'reset'])
def test_a_perfect_predictor_scores_one_and_a_wrong_one_zero(tiny, mode):
  _, targets = data.make_windows(jax.random.key(3), tiny.data, mode)
  # The stand-in reads the targets as its inputs and echoes (or flips) them.
  right = evaluate.evaluate(
    _Oracle(lambda window: window), None, targets, targets, mode, 2
  )
  assert float(right['accuracy']) == 1.0
  assert float(right['loss']) < 1e-6
  wrong = evaluate.evaluate(
    _Oracle(lambda window: 1 - window), None, targets, targets, mode, 2
  )
  assert float(wrong['accuracy']) == 0.0


def test_masked_positions_do_not_count_towards_accuracy(tiny):
  _, targets = data.make_windows(jax.random.key(3), tiny.data, 'reset')
  # Wrong exactly on the first echo_step steps of every window (unknowable).
  steps = np.arange(targets.shape[-1])

  def answer(window):
    return jnp.where(steps < 2, 1 - window, window)

  result = evaluate.evaluate(
    _Oracle(answer), None, targets, targets, 'reset', 2
  )
  assert float(result['accuracy']) == 1.0
  assert float(result['loss']) > 1.0  # Those positions still cost loss.


def test_a_trained_model_beats_chance_on_a_fresh_series(tiny, tmp_path):
  result = train.train_and_evaluate(tiny, str(tmp_path / 'run'))
  _, _, eval_key = train.run_keys(tiny.seed)
  inputs, targets = data.make_windows(eval_key, tiny.data, tiny.mode)
  model = train.make_model(tiny)
  scores = jax.jit(evaluate.evaluate, static_argnums=(0, 4, 5))(
    model, result['state'].params, inputs, targets, tiny.mode, 2
  )
  assert float(scores['accuracy']) > 0.9
  assert float(scores['loss']) < 0.3
