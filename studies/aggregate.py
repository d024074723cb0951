"""Statistics over seeds for the noise-rate study: mean and standard deviation per
(noise rate, method), the paired comparison SGLR - PGD-AT (same seed = same noisy labels),
and the figure of final PGD-20 accuracy against the noise rate.

Run names are ``METHOD noise RATE seed SEED`` (studies/noise_rates.py). Standard
deviations are over seeds with ``ddof=1``; the paired test is a two-sided paired t-test
(``scipy.stats.ttest_rel``) over the seeds that have both methods.
"""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from sglr_jax.history import read_history

NAME = re.compile(r'^(?P<method>.+) noise (?P<rate>[0-9.]+) seed (?P<seed>\d+)$')
# (column, key in a run's metrics, unit note)
COLUMNS = (('PGD-20 best', 'best'), ('PGD-20 final', 'final'), ('PGD-20 diff', 'diff'),
           ('natural final', 'natural_final'), ('fit of flipped labels', 'fit'))


def run_metrics(study_dir: str, summary: dict) -> list[dict]:
  """One dict per run: method, rate, seed and its numbers in percent."""
  out = []
  for name, info in summary['runs'].items():
    m = NAME.match(name)
    if not m:
      continue
    wd = os.path.join(study_dir, 'runs', name)
    with open(os.path.join(wd, 'results.json')) as f:
      res = json.load(f)
    hist = read_history(wd)
    fit = hist[-1].get('train_noisy_fit') if hist else None
    best, final = res['best']['pgd20_acc'], res['final']['pgd20_acc']
    out.append({'method': m['method'], 'rate': float(m['rate']), 'seed': int(m['seed']),
                'best': 100 * best, 'final': 100 * final, 'diff': 100 * (best - final),
                'natural_final': 100 * res['final']['natural_acc'],
                'fit': None if fit is None or float(m['rate']) == 0 else 100 * fit,
                'best_epoch': res['best']['epoch'], 'wall_s': info.get('wall_s')})
  return out


def mean_sd(values) -> tuple[float, float]:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return math.nan, math.nan
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def _cell(values) -> str:
  m, s = mean_sd(values)
  if math.isnan(m):
    return '-'
  return f'{m:.1f}' if math.isnan(s) else f'{m:.1f} ± {s:.1f}'


def seed_table(rows: list[dict]) -> list[str]:
  """Mean ± sd over seeds of each (rate, method) cell."""
  cells = sorted({(r['rate'], r['method']) for r in rows})
  head = ['noise', 'method', 'seeds'] + [c for c, _ in COLUMNS]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for rate, method in cells:
    rs = [r for r in rows if r['rate'] == rate and r['method'] == method]
    seeds = ','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))
    lines.append(f'| {rate:g} | {method} | {seeds} | '
                 + ' | '.join(_cell(r[k] for r in rs) for _, k in COLUMNS) + ' |')
  return lines


def paired(rows: list[dict], a: str = 'SGLR', b: str = 'PGD-AT', key: str = 'final') -> list[dict]:
  """Per rate: the seed-wise differences ``a - b`` of ``key`` and their statistics."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  out = []
  for rate in sorted({r['rate'] for r in rows}):
    by = {(r['method'], r['seed']): r[key] for r in rows if r['rate'] == rate}
    seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
    d = [by[(a, s)] - by[(b, s)] for s in seeds]
    m, sd = mean_sd(d)
    p = (float(stats.ttest_rel([by[(a, s)] for s in seeds], [by[(b, s)] for s in seeds]).pvalue)
         if len(seeds) > 1 and np.std(d) > 0 else math.nan)
    out.append({'rate': rate, 'seeds': seeds, 'diffs': d, 'mean': m, 'sd': sd,
                'wins': sum(x > 0 for x in d), 'p': p})
  return out


def paired_table(rows: list[dict]) -> list[str]:
  lines = ['| noise | seeds | SGLR - PGD-AT, final PGD-20, per seed | mean ± sd | SGLR higher '
           '| paired t-test p | same for best - final (diff) |', '|---|---|---|---|---|---|---|']
  diffs = {p['rate']: p for p in paired(rows, key='diff')}
  for p in paired(rows):
    q = diffs[p['rate']]
    lines.append(
        f"| {p['rate']:g} | {','.join(map(str, p['seeds']))} | "
        f"{', '.join(f'{x:+.1f}' for x in p['diffs'])} | {_pm(p)} | {p['wins']} of "
        f"{len(p['seeds'])} | {_p(p['p'])} | {_pm(q)} (p {_p(q['p'])}) |")
  return lines


def _pm(p: dict) -> str:
  """A paired mean difference, signed, with its sd when there is one."""
  if math.isnan(p['mean']):
    return '-'
  return f"{p['mean']:+.1f}" + ('' if math.isnan(p['sd']) else f" ± {p['sd']:.1f}")


def _p(p: float) -> str:
  return '-' if math.isnan(p) else f'{p:.3f}'


def noise_figure(rows: list[dict], path: str) -> str:
  """Final (solid) and best (dashed) PGD-20 accuracy, and the fit of the flipped labels,
  against the noise rate: mean over seeds with ± sd error bars, one colour per method."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(10, 3.8), dpi=110, layout='constrained')
  ax_acc, ax_fit = fig.subplots(1, 2)
  methods = [m for m in ('PGD-AT', 'SGLR') if any(r['method'] == m for r in rows)]
  for i, method in enumerate(methods):
    color = f'C{i}'
    rates = sorted({r['rate'] for r in rows if r['method'] == method})
    for key, style, label in (('final', '-o', 'final'), ('best', '--s', 'best')):
      ms = [mean_sd(r[key] for r in rows if r['method'] == method and r['rate'] == x)
            for x in rates]
      ax_acc.errorbar(rates, [m for m, _ in ms], yerr=[0 if math.isnan(s) else s for _, s in ms],
                      fmt=style, color=color, capsize=3, label=f'{method} {label}',
                      alpha=1.0 if key == 'final' else 0.6)
    noisy = [x for x in rates if x > 0]
    ms = [mean_sd(r['fit'] for r in rows if r['method'] == method and r['rate'] == x)
          for x in noisy]
    ax_fit.errorbar(noisy, [m for m, _ in ms], yerr=[0 if math.isnan(s) else s for _, s in ms],
                    fmt='-o', color=color, capsize=3, label=method)
  ax_acc.set(xlabel='symmetric label noise rate', ylabel='test PGD-20 accuracy (%)',
             title='robust accuracy, mean ± sd over seeds')
  ax_fit.set(xlabel='symmetric label noise rate', ylabel='flipped training labels fitted (%)',
             title='memorisation at the last epoch')
  for ax in (ax_acc, ax_fit):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, format='png', facecolor='white', bbox_inches='tight', pad_inches=0.15)
  return path
