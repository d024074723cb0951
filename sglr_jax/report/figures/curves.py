"""Paper Fig. 2: learning curves per method, with the robust generalization gap."""
from __future__ import annotations

import math
import os
from typing import Iterable

from sglr_jax.report.events import lr_decay_epochs, sglr_start_epoch
from sglr_jax.report.figures.style import context, figure, legend_below, mark_events, save
from sglr_jax.report.runs import Run, as_runs, display_labels, has, series

FILE_NAME = 'accuracy_curves.png'

# Learning-curve metric styles (history key, legend label, colour): the paper's Fig. 1 (b)
# draws the training curve orange and the test robust accuracy blue.
_CURVES = (
    ('test_natural_acc', 'Test natural', 'tab:green', '-'),
    ('test_pgd20_acc', 'Test PGD-20', 'tab:blue', '-'),
    ('train_adv_acc', 'Train adversarial', 'tab:orange', '--'),
)


def plot_accuracy_curves(runs: Run | Iterable[Run], path: str | os.PathLike) -> str | None:
  """Paper Fig. 2: per method, test natural / test PGD-20 / train adversarial accuracy.

  One panel per run (shared y axis); the shaded band is the robust generalization gap
  (train adversarial minus test PGD-20), the star the best PGD-20 epoch. Returns the path,
  or None (nothing written) when no run has any of the three curves.
  """
  runs = as_runs(runs)
  labels = display_labels(runs)
  panels = [(r, lab) for r, lab in zip(runs, labels) if any(has(r, k) for k, *_ in _CURVES)]
  if not panels:
    return None
  n = len(panels)
  ncols = min(n, 3)
  nrows = math.ceil(n / ncols)
  fig, axes = figure(nrows, ncols, 4.4 * ncols + 0.6, 3.4 * nrows + 1.0, sharey=True)
  flat = list(axes.flat)
  for ax, (run, label) in zip(flat, panels):
    by_key = {k: series(run.history, k, 100.0) for k, *_ in _CURVES}
    for key, name, color, ls in _CURVES:
      xs, ys = by_key[key]
      if xs:
        ax.plot(xs, ys, color=color, ls=ls, lw=1.6, label=name,
                marker='o' if len(xs) <= 12 else None, ms=3)
    tr, te = dict(zip(*by_key['train_adv_acc'])), dict(zip(*by_key['test_pgd20_acc']))
    common = sorted(set(tr) & set(te))
    if len(common) >= 2:
      ax.fill_between(common, [te[e] for e in common], [tr[e] for e in common],
                      color='tab:orange', alpha=0.12, lw=0,
                      label='Robust gap (train adv. − test)')
    if te:
      best = max(te, key=te.get)
      ax.plot([best], [te[best]], marker='*', ms=12, color='tab:red', ls='none',
              zorder=5, label='Best PGD-20')
      lo, hi = min(te), max(te)
      where = (best - lo) / (hi - lo) if hi > lo else 0.5
      ha = 'right' if where > 0.8 else 'left' if where < 0.2 else 'center'
      ax.annotate(f'best {te[best]:.1f}% (ep {best})', (best, te[best]), xytext=(0, 8),
                  textcoords='offset points', ha=ha, fontsize=8, color='tab:red')
    start = sglr_start_epoch(run)
    mark_events(ax, lr_decay_epochs(run), [(start, 'tab:purple')] if start is not None else [])
    ax.set_title(label, fontsize=11)
    ax.set_xlabel('Epoch')
    ax.grid(alpha=0.3)
  for row in axes:
    row[0].set_ylabel('Accuracy (%)')
  for ax in flat[n:]:
    ax.set_visible(False)
  for ax in flat[:n]:
    ax.tick_params(labelleft=True)
  legend_below(fig, flat[:n])
  fig.suptitle('Learning curves: accuracy per epoch' + context(runs), fontsize=12)
  return save(fig, path)
