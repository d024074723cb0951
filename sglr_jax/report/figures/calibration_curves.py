"""Paper Fig. B.2: expected calibration error on clean and PGD-20 test inputs per epoch."""
from __future__ import annotations

import os

from sglr_jax.report.figures.style import all_events, figure, legend_below, mark_events, overlay
from sglr_jax.report.figures.style import context, save, select

FILE_NAME = 'ece_curves.png'


def plot_ece_curves(runs, path: str | os.PathLike) -> str | None:
  """ECE (%) per epoch, clean (left) and PGD-20 (right). None when no run logged it."""
  runs, labels, colors = select(runs, 'test_ece_clean')
  if not runs:
    return None
  fig, axes = figure(1, 2, 11.5, 4.4, sharey=True)
  decays, starts = all_events(runs, colors)
  for ax, key, title in ((axes[0, 0], 'test_ece_clean', '(a) Clean test inputs'),
                         (axes[0, 1], 'test_ece_pgd20', '(b) PGD-20 test inputs')):
    overlay(ax, runs, labels, colors, key, 100.0, with_label=ax is axes[0, 0])
    mark_events(ax, decays, starts)
    ax.set_xlabel('Epoch')
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel('ECE (%)')
  legend_below(fig, [axes[0, 0]])
  fig.suptitle('Calibration over training' + context(runs), fontsize=12)
  return save(fig, path)


__all__ = ['FILE_NAME', 'plot_ece_curves']
