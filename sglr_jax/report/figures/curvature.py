"""Paper Fig. 1 and B.7 from the per-epoch analysis (``train.analysis_every_epochs``):
information in weights beside the gradient norm, and the Hessian trace of the training
loss, one line per run."""
from __future__ import annotations

import os
from typing import Iterable

from sglr_jax.report.figures.style import all_events, context, figure, legend_below
from sglr_jax.report.figures.style import mark_events, overlay, run_color, save
from sglr_jax.report.runs import Run, as_runs, display_labels, has, series

FILE_NAME = 'curvature.png'
KEYS = ('iiw', 'hessian_trace')


def _positive(runs, key) -> bool:
  vals = [v for r in runs for v in series(r.history, key)[1]]
  return bool(vals) and min(vals) > 0


def plot_curvature(runs: Run | Iterable[Run], path: str | os.PathLike) -> str | None:
  """Per epoch: (a) IIW, (b) the gradient norm of the adversarial loss beside it (the
  paper reads robust overfitting in IIW rising with the norm after the LR decay), (c) the
  Hutchinson trace of the training loss's Hessian (flatter minima: smaller). Panels
  without data are left out; returns None (nothing written) when no run has ``iiw`` or
  ``hessian_trace``.
  """
  runs = as_runs(runs)
  keep = [(r, lab, run_color(i)) for i, (r, lab) in enumerate(zip(runs, display_labels(runs)))
          if any(has(r, k) for k in KEYS)]  # colours: the run's position among all runs
  if not keep:
    return None
  runs, labels, colors = (list(t) for t in zip(*keep))
  panels = []  # (key, y label, title)
  if any(has(r, 'iiw') for r in runs):
    panels.append(('iiw', 'IIW (PAC-Bayes IB estimate)', 'Information in weights'))
    if any(has(r, 'grad_norm') for r in runs):
      panels.append(('grad_norm', r'Gradient norm $\|\nabla_\theta \mathcal{L}_{\mathrm{adv}}\|_2$',
                     'Gradient norm of the adversarial loss'))
  if any(has(r, 'hessian_trace') for r in runs):
    panels.append(('hessian_trace', r'Hessian trace $\mathrm{tr}(\nabla^2_\theta \mathcal{L})$',
                   'Hessian trace of the training loss'))
  fig, axes = figure(1, len(panels), 5.2 * len(panels) + 0.6, 4.4)
  decays, starts = all_events(runs, colors)
  for i, (ax, (key, ylabel, title)) in enumerate(zip(axes[0], panels)):
    overlay(ax, runs, labels, colors, key)
    mark_events(ax, decays, starts)
    if key == 'iiw' and _positive(runs, key):
      ax.set_yscale('log')  # IIW spans orders of magnitude over training
    ax.set_xlabel('Epoch')
    ax.set_ylabel(ylabel)
    ax.set_title(f'({chr(ord("a") + i)}) {title}')
    ax.grid(alpha=0.3)
  legend_below(fig, list(axes.flat))
  fig.suptitle('Information in weights and curvature per epoch' + context(runs), fontsize=12)
  return save(fig, path)
