"""Statistics over seeds for the seeded studies: mean and standard deviation per cell, the
paired comparison of two methods seed by seed (same seed = same initialisation, data order
and noisy labels), and figures with error bars.

Run names are ``METHOD PARAM VALUE seed SEED`` with PARAM ``noise`` (studies/noise_rates.py)
or ``eps`` (studies/epsilon.py), or ``SETTING seed SEED`` (studies/alpha_temperature.py,
where each alpha / temperature setting is a method and has no VALUE). Standard deviations
are over seeds with ``ddof=1``; the paired test is a two-sided paired t-test
(``scipy.stats.ttest_rel``) over the seeds that have both methods.
"""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from sglr_jax.history import read_history

NAME = re.compile(r'^(?P<method>.+?)(?: (?P<param>noise|eps) (?P<rate>[0-9.]+))?'
                  r' seed (?P<seed>\d+)$')
PARAM_LABELS = {'noise': 'symmetric label noise rate', 'eps': 'perturbation radius eps'}
# (column, key in a run's metrics)
COLUMNS = (('PGD-20 best', 'best'), ('PGD-20 final', 'final'), ('PGD-20 diff', 'diff'),
           ('natural final', 'natural_final'), ('fit of flipped labels', 'fit'))
CALIBRATION = (('ECE clean final', 'ece_clean'), ('ECE PGD-20 final', 'ece_adv'))


def _pct(x):
  return None if x is None else 100 * x


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
    rate = None if m['rate'] is None else float(m['rate'])
    noisy = m['param'] == 'noise' and rate
    best, final = res['best']['pgd20_acc'], res['final']['pgd20_acc']
    out.append({'method': m['method'], 'param': m['param'], 'rate': rate,
                'seed': int(m['seed']), 'best': 100 * best, 'final': 100 * final,
                'diff': 100 * (best - final), 'natural_final': 100 * res['final']['natural_acc'],
                'fit': _pct(fit) if noisy else None,
                'ece_clean': _pct(res['final'].get('ece_clean')),
                'ece_adv': _pct(res['final'].get('ece_adv')),
                'best_epoch': res['best']['epoch'], 'wall_s': info.get('wall_s')})
  return out


def _columns(rows: list[dict], columns) -> tuple:
  """``columns`` less those no run has a value for (no fit of flipped labels without noise)."""
  return tuple((c, k) for c, k in columns if any(r.get(k) is not None for r in rows))


def _cells(rows: list[dict]) -> list[tuple]:
  """The (rate, method) cells in order: by rate, then methods in the order they ran."""
  methods = list(dict.fromkeys(r['method'] for r in rows))
  cells = {(r['rate'], r['method']) for r in rows}
  return sorted(cells, key=lambda c: (-1.0 if c[0] is None else c[0], methods.index(c[1])))


def _param(rows: list[dict]) -> str | None:
  return next((r['param'] for r in rows if r['param']), None)


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


def seed_table(rows: list[dict], columns=COLUMNS) -> list[str]:
  """Mean ± sd over seeds of each (rate, method) cell; no rate column where the runs
  have none, no column without values."""
  param, columns = _param(rows), _columns(rows, columns)
  head = ([param] if param else []) + ['method', 'seeds'] + [c for c, _ in columns]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for rate, method in _cells(rows):
    rs = [r for r in rows if r['rate'] == rate and r['method'] == method]
    seeds = ','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))
    lead = f'{rate:g} | ' if param else ''
    lines.append(f'| {lead}{method} | {seeds} | '
                 + ' | '.join(_cell(r[k] for r in rs) for _, k in columns) + ' |')
  return lines


def paired(rows: list[dict], a: str = 'SGLR', b: str = 'PGD-AT', key: str = 'final') -> list[dict]:
  """Per rate: the seed-wise differences ``a - b`` of ``key`` and their statistics."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  out = []
  for rate in sorted({r['rate'] for r in rows}, key=lambda x: -1.0 if x is None else x):
    by = {(r['method'], r['seed']): r[key] for r in rows if r['rate'] == rate}
    seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
    d = [by[(a, s)] - by[(b, s)] for s in seeds]
    m, sd = mean_sd(d)
    p = (float(stats.ttest_rel([by[(a, s)] for s in seeds], [by[(b, s)] for s in seeds]).pvalue)
         if len(seeds) > 1 and np.std(d) > 0 else math.nan)
    out.append({'rate': rate, 'seeds': seeds, 'diffs': d, 'mean': m, 'sd': sd,
                'wins': sum(x > 0 for x in d), 'p': p})
  return out


def paired_table(rows: list[dict], a: str = 'SGLR', b: str = 'PGD-AT') -> list[str]:
  """Per rate, ``a - b`` seed by seed: final PGD-20 and best - final."""
  lines = [f'| {_param(rows)} | seeds | {a} - {b}, final PGD-20, per seed | mean ± sd | {a} '
           'higher | paired t-test p | same for best - final (diff) |',
           '|---|---|---|---|---|---|---|']
  diffs = {p['rate']: p for p in paired(rows, a, b, key='diff')}
  for p in paired(rows, a, b):
    lines.append(f"| {p['rate']:g} | {_paired_cells(p, diffs[p['rate']])} |")
  return lines


def settings_table(rows: list[dict], base: str) -> list[str]:
  """Each method (a setting of the sweep) minus ``base``, seed by seed."""
  lines = [f'| setting | seeds | minus {base}, final PGD-20, per seed | mean ± sd | higher '
           '| paired t-test p | same for best - final (diff) |', '|---|---|---|---|---|---|---|']
  for method in dict.fromkeys(r['method'] for r in rows):
    if method != base:
      p, q = paired(rows, method, base)[0], paired(rows, method, base, key='diff')[0]
      lines.append(f'| {method} | {_paired_cells(p, q)} |')
  return lines


def _paired_cells(p: dict, q: dict) -> str:
  return (f"{','.join(map(str, p['seeds']))} | {', '.join(f'{x:+.1f}' for x in p['diffs'])} | "
          f"{_pm(p)} | {p['wins']} of {len(p['seeds'])} | {_p(p['p'])} | "
          f"{_pm(q)} (p {_p(q['p'])})")


def _pm(p: dict) -> str:
  """A paired mean difference, signed, with its sd when there is one."""
  if math.isnan(p['mean']):
    return '-'
  return f"{p['mean']:+.1f}" + ('' if math.isnan(p['sd']) else f" ± {p['sd']:.1f}")


def _p(p: float) -> str:
  return '-' if math.isnan(p) else f'{p:.3f}'


def _errorbars(ax, xs, rows_at, key, **kw):
  """Mean ± sd over seeds of ``key`` at each x (``rows_at(x)`` = the runs there)."""
  ms = [mean_sd(r[key] for r in rows_at(x)) for x in xs]
  ax.errorbar(xs, [m for m, _ in ms], yerr=[0 if math.isnan(s) else s for _, s in ms],
              capsize=3, **kw)


def _save(fig, axes, path: str) -> str:
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, format='png', facecolor='white', bbox_inches='tight', pad_inches=0.15)
  return path


def rate_figure(rows: list[dict], path: str) -> str:
  """Final (solid) and best (dashed) PGD-20 accuracy against the noise rate or eps, and
  beside it the fit of the flipped labels (noise) or the final natural accuracy (eps):
  mean over seeds with ± sd error bars, one colour per method."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(10, 3.8), dpi=110, layout='constrained')
  ax_acc, ax_right = fig.subplots(1, 2)
  param = _param(rows)
  has_fit = any(r['fit'] is not None for r in rows)
  for i, method in enumerate(dict.fromkeys(r['method'] for r in rows)):
    mine = [r for r in rows if r['method'] == method]
    rates = sorted({r['rate'] for r in mine})
    at = lambda x, mine=mine: [r for r in mine if r['rate'] == x]
    for key, style, label in (('final', '-o', 'final'), ('best', '--s', 'best')):
      _errorbars(ax_acc, rates, at, key, fmt=style, color=f'C{i}', label=f'{method} {label}',
                 alpha=1.0 if key == 'final' else 0.6)
    _errorbars(ax_right, [x for x in rates if x > 0] if has_fit else rates, at,
               'fit' if has_fit else 'natural_final', fmt='-o', color=f'C{i}', label=method)
  ax_acc.set(xlabel=PARAM_LABELS.get(param, param), ylabel='test PGD-20 accuracy (%)',
             title='robust accuracy, mean ± sd over seeds')
  if has_fit:
    ax_right.set(xlabel=PARAM_LABELS.get(param, param),
                 ylabel='flipped training labels fitted (%)', title='memorisation at the last epoch')
  else:
    ax_right.set(xlabel=PARAM_LABELS.get(param, param), ylabel='test natural accuracy (%)',
                 title='natural accuracy at the last epoch')
  return _save(fig, (ax_acc, ax_right), path)


def settings_figure(rows: list[dict], path: str) -> str:
  """Per setting of a sweep: best and final PGD-20 accuracy, and the final ECE on clean
  and PGD-20 inputs, mean ± sd over seeds."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(10, 3.8), dpi=110, layout='constrained')
  ax_acc, ax_ece = fig.subplots(1, 2)
  methods = list(dict.fromkeys(r['method'] for r in rows))
  xs = list(range(len(methods)))
  at = lambda x: [r for r in rows if r['method'] == methods[x]]
  for key, style, label in (('final', '-o', 'final'), ('best', '--s', 'best')):
    _errorbars(ax_acc, xs, at, key, fmt=style, color='C0', label=label,
               alpha=1.0 if key == 'final' else 0.6)
  for i, (label, key) in enumerate(CALIBRATION):
    if any(r[key] is not None for r in rows):
      _errorbars(ax_ece, xs, at, key, fmt='-o', color=f'C{i + 1}', label=label)
  for ax in (ax_acc, ax_ece):
    ax.set_xticks(xs, methods, rotation=20, fontsize=8)
  ax_acc.set(ylabel='test PGD-20 accuracy (%)', title='robust accuracy, mean ± sd over seeds')
  ax_ece.set(ylabel='ECE at the last epoch (%)', title='calibration, mean ± sd over seeds')
  return _save(fig, (ax_acc, ax_ece), path)
