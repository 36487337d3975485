"""Pictures of a sweep's results, drawn on matplotlib's Agg canvas.

Both take the rows of results.csv (one dict per member, as `echo.sweep.run`
returns them). Diverged members are left out of every line, band and cell,
and counted in the titles.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Columns that may be swept, in the order their panels are drawn.
AXES = (
  'learning_rate',
  'echo_step',
  'state_size',
  'num_layers',
  'truncated_length',
  'cell',
  'mode',
)
# Lines per panel before the settings of the other axes are pooled.
MAX_LINES = 6


def _save(figure, path):
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=100)


def swept_axes(rows):
  """The columns of AXES that take more than one value in `rows`."""
  return [axis for axis in AXES if len({row[axis] for row in rows}) > 1]


def _spread(panel, axis, rows, positions, color, label):
  """Dots for `rows`, their median over each value of `axis`, and the
  min-max band around it."""
  spreads = []
  for value, position in positions.items():
    losses = [
      row['final_loss']
      for row in rows
      if row[axis] == value and not row['diverged']
    ]
    panel.scatter([position] * len(losses), losses, s=8, alpha=0.4, color=color)
    spreads.append(
      np.percentile(losses, [0, 50, 100]) if losses else [np.nan] * 3
    )
  low, median, high = np.array(spreads).T
  x = list(positions.values())
  panel.fill_between(x, low, high, alpha=0.15, color=color)
  panel.plot(x, median, marker='o', color=color, label=label)


def final_loss(rows, path):
  """Final loss against each swept axis, one panel per axis, as a PNG.

  In the panel of one axis, each setting of the other swept axes is a line:
  the median over its seeds, with the seeds' min-max band and every member
  as a dot. With more than `MAX_LINES` settings the panel pools them into
  one line. Without a swept axis, the one panel is the learning rate.
  """
  axes = swept_axes(rows) or ['learning_rate']
  diverged = sum(row['diverged'] for row in rows)
  figure = Figure(figsize=(5 * len(axes), 4), layout='constrained')
  figure.suptitle(
    f'{len(rows)} members, {diverged} diverged', fontsize='medium'
  )
  for panel, axis in zip(
    figure.subplots(1, len(axes), squeeze=False)[0], axes, strict=True
  ):
    values = sorted({row[axis] for row in rows})
    numeric = not isinstance(values[0], str)
    positions = {
      value: value if numeric else index for index, value in enumerate(values)
    }
    others = [other for other in axes if other != axis]
    settings = sorted({tuple(row[other] for other in others) for row in rows})
    if len(settings) > MAX_LINES:
      settings, others = [()], []
    for index, setting in enumerate(settings):
      members = [
        row for row in rows if tuple(row[other] for other in others) == setting
      ]
      label = ', '.join(
        f'{other}={value}' for other, value in zip(others, setting, strict=True)
      )
      _spread(
        panel,
        axis,
        members,
        positions,
        f'C{index % 10}',
        label or f'median of {len(members) // len(values)}',
      )
    if axis == 'learning_rate':
      panel.set_xscale('log')
    if len(values) <= 16:
      panel.set_xticks(list(positions.values()), [str(v) for v in values])
      panel.minorticks_off()
    panel.set_yscale('log')
    panel.set_xlabel(axis)
    panel.set_ylabel('final training loss')
    panel.legend(fontsize='x-small')
  _save(figure, path)


def text_color(background):
  """'black' on a light cell colour (RGBA), 'white' on a dark one.

  Light means a relative luminance (ITU-R BT.709 weights of the
  linearised sRGB channels) above 0.18, where black and white text have
  about the same contrast. A cell with no value (transparent) shows the
  white figure, so its text is black.
  """
  red, green, blue, alpha = background
  if alpha == 0:
    return 'black'
  linear = [
    c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    for c in (red, green, blue)
  ]
  luminance = np.dot([0.2126, 0.7152, 0.0722], linear)
  return 'black' if luminance > 0.18 else 'white'


def heatmap(rows, x, y, path, score='eval_accuracy'):
  """Mean `score` over the members of each (`x`, `y`) cell, as a PNG.

  The mean runs over the seeds and any other swept axis; each cell is
  labelled with its value, in black on light colours and white on dark.
  """
  x_values = sorted({row[x] for row in rows})
  y_values = sorted({row[y] for row in rows})
  grid = np.full((len(y_values), len(x_values)), np.nan)
  for i, y_value in enumerate(y_values):
    for j, x_value in enumerate(x_values):
      scores = [
        row[score]
        for row in rows
        if row[x] == x_value and row[y] == y_value and not row['diverged']
      ]
      if scores:
        grid[i, j] = np.mean(scores)
  figure = Figure(
    figsize=(max(4, 1.5 + 0.55 * len(x_values)), 1.5 + 0.45 * len(y_values)),
    layout='constrained',
  )
  panel = figure.subplots()
  image = panel.imshow(grid, origin='lower', aspect='auto', cmap='viridis')
  for i in range(len(y_values)):
    for j in range(len(x_values)):
      panel.text(
        j,
        i,
        f'{grid[i, j]:.2f}',
        ha='center',
        va='center',
        fontsize=10,
        color=text_color(image.cmap(image.norm(grid[i, j]))),
      )
  panel.set_xticks(range(len(x_values)), x_values)
  panel.set_yticks(range(len(y_values)), y_values)
  panel.set_xlabel(x)
  panel.set_ylabel(y)
  members = len(rows) // max(grid.size, 1)
  panel.set_title(
    f'{score}, mean over {members} members per cell', fontsize='medium'
  )
  figure.colorbar(image, ax=panel)
  _save(figure, path)
