"""Appendix B.2: reliability diagrams of the best and final checkpoints, clean and PGD-20."""
from __future__ import annotations

import os
from typing import Any

from sglr_jax.evaluation import metrics
from sglr_jax.evaluation.results import number
from sglr_jax.report.figures.style import figure, legend_below, save
from sglr_jax.report.runs import Run


def _bins(rel: Any) -> list[tuple[int, float | None, float | None, float]] | None:
  """[(bin index, mean confidence, accuracy, count)] of one reliability dict, or None."""
  if not isinstance(rel, dict):
    return None
  conf, acc = rel.get('bin_conf'), rel.get('bin_acc')
  if not isinstance(conf, list) or not isinstance(acc, list) or not conf:
    return None
  count = rel.get('bin_count')
  count = count if isinstance(count, list) and len(count) == len(conf) else [None] * len(conf)
  out = []
  for i, (c, a, n) in enumerate(zip(conf, acc, count)):
    n = number(n)
    out.append((i, number(c), number(a), 1.0 if n is None else n))
  return out


def ece_from_bins(rel: dict) -> float | None:
  """The ECE (fraction) of a reliability dict, for results.json without an ``ece_*``:
  ``metrics.expected_calibration_error`` of the bins' sums (mean times count)."""
  bins = _bins(rel)
  if not bins:
    return None
  used = [(c, a, n) for _, c, a, n in bins if c is not None and a is not None and n > 0]
  total = sum(n for *_, n in used)
  if total <= 0:
    return None
  return metrics.expected_calibration_error([c * n for c, _, n in used],
                                            [a * n for _, a, n in used], total)


def plot_reliability(run: Run, path: str | os.PathLike, title: str | None = None) -> str | None:
  """Reliability diagrams and ECE for best and final, clean and adversarial inputs.

  Bars: accuracy per equal-width confidence bin; red hatched: the gap to the bin's mean
  confidence; the diagonal is perfect calibration. ECE from results.json, or computed from
  the bins when absent. Returns None when results.json has no reliability data.
  """
  res = run.results or {}
  panels = []  # (split, kind, bins, ece, epoch)
  splits = [s for s in ('best', 'final') if isinstance(res.get(s), dict)]
  kinds = ('clean', 'adv')
  for split in splits:
    rel = res[split].get('reliability') or {}
    for kind in kinds:
      bins = _bins(rel.get(kind) if isinstance(rel, dict) else None)
      if bins:
        ece = number(res[split].get(f'ece_{kind}'))
        if ece is None:
          ece = ece_from_bins(rel[kind])
        panels.append((split, kind, bins, ece, number(res[split].get('epoch'))))
  if not panels:
    return None
  rows = [s for s in splits if any(p[0] == s for p in panels)]
  cols = [k for k in kinds if any(p[1] == k for p in panels)]
  fig, axes = figure(len(rows), len(cols), 4.0 * len(cols) + 0.4, 3.9 * len(rows) + 0.8,
                     sharex=True, sharey=True)
  for ax in axes.flat:
    ax.set_visible(False)
  names = {'clean': 'clean', 'adv': 'PGD-20'}
  for split, kind, bins, ece, epoch in panels:
    ax = axes[rows.index(split), cols.index(kind)]
    ax.set_visible(True)
    width = 1.0 / len(bins)
    shown = [(i, c, a) for i, c, a, n in bins if c is not None and a is not None and n > 0]
    centers = [(i + 0.5) * width for i, _, _ in shown]
    ax.bar(centers, [a for *_, a in shown], width=width, color='tab:blue', alpha=0.8,
           edgecolor='white', lw=0.6, label='Accuracy')
    ax.bar(centers, [c - a for _, c, a in shown], bottom=[a for *_, a in shown], width=width,
           color='tab:red', alpha=0.25, edgecolor='tab:red', hatch='//', lw=0.6,
           label='Gap to confidence')
    ax.plot([0, 1], [0, 1], color='0.3', ls='--', lw=1.0, label='Perfect calibration')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect('equal')
    when = f'{split.capitalize()}' + (f' (epoch {int(epoch)})' if epoch is not None else '')
    ax.set_title(f'{when}, {names[kind]}')
    if ece is not None:
      ax.text(0.04, 0.95, f'ECE = {100 * ece:.2f}%', transform=ax.transAxes, va='top',
              fontsize=10, bbox=dict(boxstyle='round', fc='white', ec='0.7'))
    ax.set_xlabel('Confidence')
    ax.set_ylabel('Accuracy')
    ax.tick_params(labelleft=True, labelbottom=True)
    ax.grid(alpha=0.3)
  legend_below(fig, [ax for ax in axes.flat if ax.get_visible()])
  fig.suptitle(f'Reliability: {title or run.label}', fontsize=12)
  return save(fig, path)
