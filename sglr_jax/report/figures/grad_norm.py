"""Paper Fig. 1: gradient norm of the adversarial loss, and the robust generalization gap."""
from __future__ import annotations

import os
from typing import Iterable

from sglr_jax.report.figures.style import all_events, figure, legend_below, mark_events, overlay
from sglr_jax.report.figures.style import context, save, select
from sglr_jax.report.runs import Run, series

FILE_NAME = 'grad_norm.png'


def plot_grad_norm(runs: Run | Iterable[Run], path: str | os.PathLike) -> str | None:
  """Paper Fig. 1: gradient norm of the adversarial loss w.r.t. the weights per epoch.

  Second panel: the robust generalization gap (train adversarial minus test PGD-20
  accuracy), which the paper shows widening together with the norm after the LR decay.
  Returns None (nothing written) when no run has ``grad_norm``.
  """
  runs, labels, colors = select(runs, 'grad_norm')
  if not runs:
    return None

  def gap(run):
    tr = dict(zip(*series(run.history, 'train_adv_acc', 100.0)))
    te = dict(zip(*series(run.history, 'test_pgd20_acc', 100.0)))
    common = sorted(set(tr) & set(te))
    return common, [tr[e] - te[e] for e in common]

  with_gap = any(gap(r)[0] for r in runs)
  fig, axes = figure(1, 2 if with_gap else 1, 11.5 if with_gap else 6.5, 4.4)
  decays, starts = all_events(runs, colors)
  ax = axes[0, 0]
  overlay(ax, runs, labels, colors, 'grad_norm')
  mark_events(ax, decays, starts)
  ax.set_xlabel('Epoch')
  ax.set_ylabel(r'Gradient norm $\|\nabla_\theta \mathcal{L}_{\mathrm{adv}}\|_2$')
  ax.set_title('(a) Gradient norm of the adversarial loss')
  ax.grid(alpha=0.3)
  if with_gap:
    ax = axes[0, 1]
    overlay(ax, runs, labels, colors, None, transform=gap)
    mark_events(ax, decays, starts)
    ax.axhline(0, color='0.6', lw=0.8)
    ax.set_xlabel('Epoch')
    ax.set_ylabel('Train adv. − test PGD-20 accuracy (pp)')
    ax.set_title('(b) Robust generalization gap')
    ax.grid(alpha=0.3)
  legend_below(fig, list(axes.flat))
  fig.suptitle('Gradient norm per epoch' + context(runs), fontsize=12)
  return save(fig, path)
