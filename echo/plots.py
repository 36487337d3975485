"""Pictures of a run as PNG files, drawn by matplotlib without a display.

loss.png  the training loss over the windows of the whole run, on a log
          scale, with the loss on the evaluation series after each epoch.
echo.png  a few consecutive windows of a series the model never trained on:
          input, target and predicted probability one above the other, with
          window edges dashed and unknowable targets shaded.
"""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

_DPI = 100


def plot_losses(path, records, windows_per_epoch):
  """Training and evaluation loss of a run, from its metrics records.

  Args:
    path: the PNG to write.
    records: the dicts of metrics.jsonl; training records have `step`,
      `loss` and `mean_loss`, evaluation records `step`, `eval_loss` and
      `eval_accuracy`.
    windows_per_epoch: marks the epoch boundaries.
  """
  train = [r for r in records if 'loss' in r]
  evaluations = [r for r in records if 'eval_loss' in r]
  # Fixed margins: a layout engine would take as long as the drawing.
  figure = Figure(figsize=(8, 5), dpi=_DPI)
  # Room below for the legend, which inside the axes would hide some curve.
  figure.subplots_adjust(left=0.1, right=0.98, bottom=0.24, top=0.93)
  axes = figure.add_subplot()
  steps = [r['step'] for r in train]
  axes.plot(
    steps,
    [r['loss'] for r in train],
    '.',
    color='tab:blue',
    alpha=0.35,
    label='training: first window of each progress line',
  )
  axes.plot(
    steps,
    [r['mean_loss'] for r in train],
    '-',
    color='tab:blue',
    label="training: mean over each progress line's windows",
  )
  if evaluations:
    axes.plot(
      [r['step'] for r in evaluations],
      [r['eval_loss'] for r in evaluations],
      'o',
      color='tab:orange',
      markeredgecolor='black',
      label='evaluation series, after each epoch',
    )
  last_step = max(steps + [r['step'] for r in evaluations], default=0)
  for edge in range(windows_per_epoch, last_step, windows_per_epoch):
    axes.axvline(edge, color='grey', linewidth=0.6, alpha=0.5)
  axes.set_yscale('log')
  # Plain numbers at 1, 2 and 5 times a power of ten read more easily than
  # powers of ten, also when the loss spans less than one decade.
  axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
  axes.yaxis.set_major_formatter(StrMethodFormatter('{x:g}'))
  low, high = axes.get_ylim()
  if high < 10 * low:
    # Under a decade, one major tick may be all there is: label them all.
    axes.yaxis.set_minor_formatter(StrMethodFormatter('{x:g}'))
  else:
    axes.yaxis.set_minor_formatter(NullFormatter())
  axes.set_xlabel(
    f'windows trained ({windows_per_epoch} an epoch; grey lines mark epochs)'
  )
  axes.set_ylabel('cross-entropy loss (log scale)')
  title = 'Loss of the run'
  if evaluations:
    accuracy = evaluations[-1]['eval_accuracy']
    title += f' (last evaluation: accuracy {accuracy:.3f})'
  axes.set_title(title)
  axes.grid(True, which='both', alpha=0.3)
  figure.legend(loc='lower center', ncols=2, frameon=False)
  figure.savefig(path)


def plot_echo(path, inputs, targets, probabilities, knowable, echo_step):
  """Consecutive windows of one row: what the model reads, must say, says.

  Args:
    path: the PNG to write.
    inputs: int `[W, T]`, W windows of T steps that follow each other.
    targets: int `[W, T]`.
    probabilities: float `[W, T, C]`, the model's prediction at every step.
    knowable: bool `[W, T]`, False where no model could know the target.
    echo_step: the delay of the task, for the title.
  """
  truncated_length = inputs.shape[1]
  inputs, targets, knowable = (np.ravel(x) for x in (inputs, targets, knowable))
  probabilities = probabilities.reshape(len(inputs), -1)
  steps = np.arange(len(inputs))
  num_classes = probabilities.shape[-1]
  figure = Figure(figsize=(10, 6), dpi=_DPI)
  figure.subplots_adjust(
    left=0.08, right=0.98, bottom=0.15, top=0.93, hspace=0.12
  )
  rows = figure.subplots(3, 1, sharex=True)
  rows[0].bar(steps, inputs, width=0.8, color='tab:blue')
  rows[0].set_ylabel('input symbol')
  rows[1].bar(steps, targets, width=0.8, color='tab:green')
  rows[1].set_ylabel('target symbol')
  if num_classes == 2:
    predicted, label = probabilities[:, 1], 'predicted P(symbol 1)'
  else:
    predicted, label = probabilities[steps, targets], 'predicted P(target)'
  rows[2].plot(steps, predicted, 'o-', color='tab:red', markersize=3)
  rows[2].axhline(0.5, color='grey', linewidth=0.6)
  rows[2].set_ylim(-0.05, 1.05)
  rows[2].set_ylabel(label)
  rows[2].set_xlabel('time step')
  for axes in rows[:2]:
    axes.set_yticks(range(num_classes))
    axes.set_ylim(0, num_classes - 0.5)
  for axes in rows:
    for edge in range(truncated_length, len(steps), truncated_length):
      axes.axvline(edge - 0.5, color='black', linestyle='--', linewidth=1)
    for first, last in _runs(~knowable):
      axes.axvspan(first - 0.5, last + 0.5, color='grey', alpha=0.25)
  figure.legend(
    handles=[
      Line2D([], [], color='black', linestyle='--', label='window edge'),
      Patch(color='grey', alpha=0.25, label='target unknowable'),
    ],
    loc='lower center',
    ncols=2,
  )
  windows = len(steps) // truncated_length
  figure.suptitle(
    f'Echo on a held-out series: {windows} windows of {truncated_length} '
    f'steps; the target is the input {echo_step} steps earlier'
  )
  figure.savefig(path)


def _runs(mask):
  """(first, last) index of every run of consecutive True values."""
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
  return zip(starts, ends - 1, strict=True)
