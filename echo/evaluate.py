"""Evaluation on a series the model never trained on: loss and accuracy.

The model runs over the windows in order without updating anything: in
'carry' mode the state flows from window to window as in training, in
'reset' mode every window starts from zeros. Accuracy counts only the
positions whose target can be known (see `echo.data.knowable`).
"""

import jax
import jax.numpy as jnp
import optax

from echo import data as data_lib


def predict(model, params, inputs, mode):
  """Logits `[W, B, T, C]` of `params` on windows `[W, B, T]`, in order."""
  zeros = model.initial_carries(inputs.shape[1])

  def body(carries, window):
    if mode == 'reset':
      carries = zeros
    carries, logits = model.apply({'params': params}, carries, window)
    return carries, logits

  _, logits = jax.lax.scan(body, zeros, inputs)
  return logits


def evaluate(model, params, inputs, targets, mode, echo_step):
  """Loss and accuracy of `params` on windows `[W, B, T]`.

  Args:
    model: the StackedRNN.
    params: its parameters.
    inputs: int `[W, B, T]`.
    targets: int `[W, B, T]`.
    mode: 'carry' or 'reset'.
    echo_step: delay of the task (sets which positions can be known).

  Returns:
    dict of scalars: `loss`, mean cross-entropy over every position (as in
    training); `accuracy`, the fraction of knowable positions whose most
    probable symbol is the target.
  """
  num_windows, batch_size, steps = inputs.shape
  logits = predict(model, params, inputs, mode)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  known = data_lib.knowable(num_windows * steps, steps, echo_step, mode)
  known = known.reshape(num_windows, 1, steps)
  correct = (logits.argmax(-1) == targets) & known
  count = known.sum() * batch_size
  return {
    'loss': losses.mean(),
    'accuracy': correct.sum() / jnp.maximum(count, 1),
  }
