"""Paper Fig. 4: memorization of the noisy training labels, beside the test accuracy."""
from __future__ import annotations

import os
from typing import Iterable

from sglr_jax.report.figures.style import all_events, figure, legend_below, mark_events, overlay
from sglr_jax.report.figures.style import context, save, select, style_legend
from sglr_jax.report.runs import Run

FILE_NAME = 'noisy_fit.png'


def plot_noisy_fit(runs: Run | Iterable[Run], path: str | os.PathLike) -> str | None:
  """Paper Fig. 4: fit of the noisy training labels, and test accuracy, per epoch.

  Left: training accuracy on the noisy examples against their noisy labels (memorization;
  solid) and, where logged, against their clean labels (dashed). Right: test natural
  (dashed) and PGD-20 (solid) accuracy. Returns None when no run has ``train_noisy_fit``.
  """
  runs, labels, colors = select(runs, 'train_noisy_fit')
  if not runs:
    return None
  fig, axes = figure(1, 2, 11.5, 4.4)
  decays, starts = all_events(runs, colors)
  ax = axes[0, 0]
  overlay(ax, runs, labels, colors, 'train_noisy_fit', 100.0, ls='-')
  clean = overlay(ax, runs, labels, colors, 'train_clean_acc', 100.0, ls='--',
                  with_label=False)
  mark_events(ax, decays, starts)
  ax.set_xlabel('Epoch')
  ax.set_ylabel('Training accuracy (%)')
  ax.set_title('(a) Fit of the noisy training labels')
  ax.grid(alpha=0.3)
  style_legend(ax, [('-', 'vs. noisy labels')] + ([('--', 'vs. clean labels')] if clean else []),
               loc='upper left')
  ax = axes[0, 1]
  nat = overlay(ax, runs, labels, colors, 'test_natural_acc', 100.0, ls='--',
                with_label=False)
  pgd = overlay(ax, runs, labels, colors, 'test_pgd20_acc', 100.0, ls='-', with_label=False)
  mark_events(ax, decays, starts)
  ax.set_xlabel('Epoch')
  ax.set_ylabel('Test accuracy (%)')
  ax.set_title('(b) Test accuracy')
  ax.grid(alpha=0.3)
  styles = ([('--', 'natural')] if nat else []) + ([('-', 'PGD-20')] if pgd else [])
  if styles:
    style_legend(ax, styles)
  legend_below(fig, list(axes.flat))
  fig.suptitle('Memorization of noisy labels' + context(runs), fontsize=12)
  return save(fig, path)
