"""Plots (PNG) and markdown/JSON result tables from training workdirs.

Reads what training and evaluation leave in a workdir:

- ``config.json``: the resolved config (nested dict).
- ``history.jsonl``: one JSON object per epoch; a resumed run may repeat an epoch, and the
  last line for an epoch wins. Any key but ``epoch`` may be missing or null in a line: the
  curve simply has no point there.
- ``results.json`` (optional): best / final / diff from ``evaluate``.

Everything is read tolerantly because reports are made from runs that are still going,
crashed, or were written by older code. The figures follow the paper: learning curves with
LR decays and the SGLR start marked (Fig. 2), gradient norm of the adversarial loss (Fig. 1),
fit of the noisy labels (Fig. 4), reliability diagrams (appendix B.2). Matplotlib is used
through ``matplotlib.figure.Figure`` (Agg canvas), never pyplot, so making a report changes
no global backend state and needs no display.

Command line: ``python -m sglr_jax.report --out OUT_DIR WORKDIR [WORKDIR ...]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import warnings
from typing import Any, Iterable, Sequence

# (results.json key, history key of the test curve, markdown column title)
METRICS = (
    ('natural_acc', 'test_natural_acc', 'Natural'),
    ('pgd20_acc', 'test_pgd20_acc', 'PGD-20'),
    ('autoattack_acc', None, 'AutoAttack'),
)
# Calibration errors in results.json (fractions), shown in % in report.md.
ECE_KEYS = (('ece_clean', 'ECE clean'), ('ece_adv', 'ECE adv'))

# Canonical figure file names written by make_report.
ACCURACY_PNG = 'accuracy_curves.png'
GRAD_NORM_PNG = 'grad_norm.png'
NOISY_FIT_PNG = 'noisy_fit.png'

_OBJECTIVE_LABELS = {
    'at': 'PGD-AT', 'pgd_at': 'PGD-AT', 'pgdat': 'PGD-AT', 'madry': 'PGD-AT', 'pgd': 'PGD-AT',
    'trades': 'TRADES',
    'ls': 'PGD-AT + LS', 'at_ls': 'PGD-AT + LS', 'label_smoothing': 'PGD-AT + LS',
    'te': 'PGD-AT + TE', 'at_te': 'PGD-AT + TE',
    'mart': 'MART',
    'standard': 'Standard', 'ce': 'Standard', 'erm': 'Standard',
}

# Learning-curve metric styles (history key, legend label, colour): the paper's Fig. 1 (b)
# draws the training curve orange and the test robust accuracy blue.
_CURVES = (
    ('test_natural_acc', 'Test natural', 'tab:green', '-'),
    ('test_pgd20_acc', 'Test PGD-20', 'tab:blue', '-'),
    ('train_adv_acc', 'Train adversarial', 'tab:orange', '--'),
)


@dataclasses.dataclass
class Run:
  """One workdir, parsed. ``history`` is deduplicated by epoch and sorted."""
  label: str
  config: dict
  history: list[dict]
  results: dict | None
  workdir: str = ''


# ----------------------------------------------------------------------------- reading


def _get(d: Any, dotted: str, default: Any = None) -> Any:
  """``_get(cfg, 'a.b.c')`` that never raises on missing or non-dict levels."""
  for part in dotted.split('.'):
    if not isinstance(d, dict) or part not in d:
      return default
    d = d[part]
  return default if d is None else d


def _num(x: Any) -> float | None:
  """A finite float, or None for missing / null / NaN / non-numeric values."""
  if x is None or isinstance(x, bool):
    return None
  try:
    v = float(x)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def _truthy(x: Any) -> bool:
  if isinstance(x, str):
    return x.strip().lower() in ('1', 'true', 'yes', 'on')
  return bool(x)


def _read_json(path: str) -> Any:
  """Parsed JSON, or None if the file is absent or unreadable (warns on the latter)."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    warnings.warn(f'{path}: unreadable JSON ({e}); ignored')
    return None


def read_history(path: str) -> list[dict]:
  """Epoch records of a history.jsonl: last line per epoch wins, sorted by epoch.

  Blank lines, a truncated last line (a killed writer) and lines without a usable ``epoch``
  are skipped with a warning rather than failing the report.
  """
  by_epoch: dict[int, dict] = {}
  bad = 0
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
      except ValueError:
        bad += 1
        continue
      epoch = _num(rec.get('epoch')) if isinstance(rec, dict) else None
      if epoch is None:
        bad += 1
        continue
      rec = dict(rec)
      rec['epoch'] = int(epoch)
      by_epoch[rec['epoch']] = rec  # a resumed run re-writes epochs: keep the last
  if bad:
    warnings.warn(f'{path}: skipped {bad} unparsable line(s)')
  return [by_epoch[e] for e in sorted(by_epoch)]


def derive_label(config: dict, fallback: str = 'run') -> str:
  """Config ``name`` if set, else e.g. 'PGD-AT', 'PGD-AT + SGLR', 'TRADES + SGLR'."""
  name = config.get('name') if isinstance(config, dict) else None
  if isinstance(name, str) and name.strip():
    return name.strip()
  obj = _get(config, 'objective.name')
  if obj is None or not str(obj).strip():
    base = fallback
  else:
    key = str(obj).strip().lower().replace('-', '_').replace(' ', '_')
    base = _OBJECTIVE_LABELS.get(key, str(obj).strip().upper())
  if _truthy(_get(config, 'sglr.enabled', False)):
    base += ' + SGLR'
  return base


def load_run(workdir: str | os.PathLike) -> Run:
  """Parse one workdir; ValueError if it has no history.jsonl or no epoch in it."""
  workdir = os.fspath(workdir)
  hist_path = os.path.join(workdir, 'history.jsonl')
  if not os.path.isfile(hist_path):
    why = 'does not exist' if not os.path.isdir(workdir) else 'has no history.jsonl'
    raise ValueError(
        f'workdir {workdir!r} {why}: not a training workdir, or training has not '
        'finished an epoch yet')
  history = read_history(hist_path)
  if not history:
    raise ValueError(f'{hist_path} holds no epoch record (empty or unparsable)')
  config = _read_json(os.path.join(workdir, 'config.json'))
  config = config if isinstance(config, dict) else {}
  results = _read_json(os.path.join(workdir, 'results.json'))
  results = results if isinstance(results, dict) else None
  fallback = os.path.basename(os.path.abspath(workdir)) or 'run'
  return Run(label=derive_label(config, fallback), config=config, history=history,
             results=results, workdir=workdir)


def _as_runs(runs: Run | Iterable[Run]) -> list[Run]:
  return [runs] if isinstance(runs, Run) else list(runs)


def _fmt_rate(rate: float) -> str:
  return f'{100 * rate:g}%'


def display_labels(runs: Sequence[Run]) -> list[str]:
  """Run labels made unique: duplicates get the config fields that tell them apart."""
  labels = [r.label for r in runs]
  fields = (
      ('data.name', lambda v: str(v)),
      ('data.noise.rate', lambda v: f'noise {_fmt_rate(v)}' if _num(v) is not None else None),
      ('model.name', lambda v: str(v)),
      ('schedule.name', lambda v: str(v)),
      ('sglr.start_epoch', lambda v: f'start {v}'),
      ('train.epochs', lambda v: f'{v} ep'),
  )
  groups: dict[str, list[int]] = {}
  for i, lab in enumerate(labels):
    groups.setdefault(lab, []).append(i)
  for lab, idx in groups.items():
    if len(idx) < 2:
      continue
    parts: dict[int, list[str]] = {i: [] for i in idx}
    for key, fmt in fields:
      vals = [_get(runs[i].config, key) for i in idx]
      if len({json.dumps(v, sort_keys=True) for v in vals}) > 1:
        for i, v in zip(idx, vals):
          s = fmt(v) if v is not None else None
          parts[i].append(s if s else f'{key.split(".")[-1]}=?')
    for i in idx:
      if parts[i]:
        labels[i] = f'{lab} ({", ".join(parts[i])})'
  # Still equal (same config): the workdir's name, then a counter.
  for stage in ('dir', 'count'):
    seen: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
      seen.setdefault(lab, []).append(i)
    for lab, idx in seen.items():
      if len(idx) < 2:
        continue
      for n, i in enumerate(idx):
        if stage == 'dir':
          base = os.path.basename(os.path.abspath(runs[i].workdir)) if runs[i].workdir else ''
          labels[i] = f'{lab} [{base}]' if base else f'{lab} #{n + 1}'
        else:
          labels[i] = f'{lab} #{n + 1}'
  return labels


# ----------------------------------------------------------------------------- summaries


def _series(history: Sequence[dict], key: str, scale: float = 1.0):
  """(epochs, values) of one history key, skipping epochs where it is missing."""
  xs, ys = [], []
  for rec in history:
    v = _num(rec.get(key))
    if v is not None:
      xs.append(rec['epoch'])
      ys.append(v * scale)
  return xs, ys


def _has(run: Run, key: str) -> bool:
  return any(_num(rec.get(key)) is not None for rec in run.history)


def _summary(run: Run) -> dict:
  """Best / final / diff per metric as fractions, from results.json or else the history.

  Without results.json, "best" is the epoch of highest test PGD-20 accuracy and "final" the
  last epoch with a test accuracy, as in the paper's protocol.
  """
  out: dict[str, Any] = {'metrics': {}}
  res = run.results
  if res is not None and (isinstance(res.get('best'), dict) or isinstance(res.get('final'), dict)):
    best = res.get('best') if isinstance(res.get('best'), dict) else {}
    final = res.get('final') if isinstance(res.get('final'), dict) else {}
    diff = res.get('diff') if isinstance(res.get('diff'), dict) else {}
    out['source'] = 'results'
    out['best_epoch'] = _num(best.get('epoch'))
    out['final_epoch'] = _num(final.get('epoch'))
    if out['final_epoch'] is None:
      out['final_epoch'] = run.history[-1]['epoch']
    for key, _, _ in METRICS:
      b, f = _num(best.get(key)), _num(final.get(key))
      # best - final from the numbers shown, so that the row is self-consistent; the
      # stored diff only where one side is missing.
      d = b - f if b is not None and f is not None else _num(diff.get(key))
      out['metrics'][key] = {'best': b, 'final': f, 'diff': d}
    for key, _ in ECE_KEYS:
      out['metrics'][key] = {'best': _num(best.get(key)), 'final': _num(final.get(key))}
  else:
    out['source'] = 'history'
    tested = [r for r in run.history
              if any(_num(r.get(h)) is not None for _, h, _ in METRICS if h)]
    with_pgd = [r for r in run.history if _num(r.get('test_pgd20_acc')) is not None]
    best = max(with_pgd, key=lambda r: _num(r['test_pgd20_acc'])) if with_pgd else {}
    final = tested[-1] if tested else {}
    out['best_epoch'] = best.get('epoch')
    out['final_epoch'] = final.get('epoch')
    for key, hkey, _ in METRICS:
      b = _num(best.get(hkey)) if hkey else None
      f = _num(final.get(hkey)) if hkey else None
      d = b - f if b is not None and f is not None else None
      out['metrics'][key] = {'best': b, 'final': f, 'diff': d}
  for k in ('best_epoch', 'final_epoch'):
    if out[k] is not None:
      out[k] = int(out[k])
  return out


def _pct(v: float | None) -> float | None:
  return None if v is None else 100.0 * v


def _fmt(v: float | None) -> str:
  """One decimal, '-' for missing, never '-0.0'."""
  if v is None:
    return '-'
  s = f'{v:.1f}'
  return '0.0' if s == '-0.0' else s


def _present_metrics(summaries: Sequence[dict]) -> list[tuple[str, str]]:
  """Natural and PGD-20 always; AutoAttack only if some run has it."""
  out = []
  for key, _, title in METRICS:
    has = any(s['metrics'][key][p] is not None for s in summaries for p in ('best', 'final'))
    if has or key != 'autoattack_acc':
      out.append((key, title))
  return out


def results_table_json(runs: Run | Iterable[Run]) -> dict:
  """The results table as data (percent, unrounded): one row per run."""
  runs = _as_runs(runs)
  labels = display_labels(runs)
  summaries = [_summary(r) for r in runs]
  metrics = [k for k, _ in _present_metrics(summaries)]
  rows = []
  for run, label, s in zip(runs, labels, summaries):
    row = {'method': label, 'workdir': run.workdir, 'source': s['source'],
           'best_epoch': s['best_epoch'], 'final_epoch': s['final_epoch']}
    for key in metrics:
      row[key] = {p: _pct(s['metrics'][key][p]) for p in ('best', 'final', 'diff')}
    for key, _ in ECE_KEYS:
      if key in s['metrics'] and any(v is not None for v in s['metrics'][key].values()):
        row[key] = {p: _pct(v) for p, v in s['metrics'][key].items()}
    rows.append(row)
  return {'unit': 'percent', 'diff': 'best - final', 'metrics': metrics, 'rows': rows}


def results_table(runs: Run | Iterable[Run]) -> str:
  """Markdown Best / Final / Diff table in the paper's format (%, one decimal).

  Rows whose numbers come from the training history (no results.json yet) are marked with
  a dagger and explained below the table.
  """
  table = results_table_json(runs)
  titles = {k: t for k, _, t in METRICS}
  head = ['Method']
  for key in table['metrics']:
    head += [f'{titles[key]} best', 'final', 'diff']
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join([':---'] + ['---:'] * (len(head) - 1)) + '|']
  from_history = False
  for row in table['rows']:
    name = row['method'].replace('|', '\\|')
    if row['source'] == 'history':
      name += ' †'
      from_history = True
    cells = [name]
    for key in table['metrics']:
      cells += [_fmt(row[key][p]) for p in ('best', 'final', 'diff')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if from_history:
    lines += ['', '† no results.json: from the training history; best = epoch of highest '
              'test PGD-20 accuracy, final = last tested epoch.']
  return '\n'.join(lines) + '\n'


def _calibration_table(runs: Sequence[Run]) -> str | None:
  """Markdown ECE table (%) for runs whose results.json has ECE; None if none has."""
  table = results_table_json(runs)
  rows = [r for r in table['rows'] if any(k in r for k, _ in ECE_KEYS)]
  if not rows:
    return None
  lines = ['| Method | ECE clean best | final | ECE adv best | final |',
           '|:---|---:|---:|---:|---:|']
  for r in rows:
    cells = [r['method'].replace('|', '\\|')]
    for key, _ in ECE_KEYS:
      cells += [_fmt((r.get(key) or {}).get(p)) for p in ('best', 'final')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- events


def lr_decay_epochs(run: Run) -> list[float]:
  """x positions of learning-rate decays.

  From the ``lr`` history when it has one: a decay between epochs e0 and e1 is drawn at
  their midpoint, which is right whatever convention the schedule uses. Smooth schedules
  (cosine, or an lr that changes at most epochs) have no discrete decay and give []. Without
  an ``lr`` history, the config's ``schedule.decay_epochs`` (piecewise) up to the last epoch.
  """
  if str(_get(run.config, 'schedule.name', '')).lower() == 'cosine':
    return []
  lrs = [(e, v) for e, v in zip(*_series(run.history, 'lr')) if v > 0]
  if len(lrs) >= 2:
    changes = [(e0, e1, v1 < v0) for (e0, v0), (e1, v1) in zip(lrs, lrs[1:])
               if not math.isclose(v0, v1, rel_tol=1e-6, abs_tol=0.0)]
    if len(changes) > max(4, len(lrs) // 5):
      return []  # smooth schedule
    return [(e0 + e1) / 2 for e0, e1, down in changes if down]
  decays = _get(run.config, 'schedule.decay_epochs', [])
  if not isinstance(decays, (list, tuple)):
    decays = [decays]
  last = run.history[-1]['epoch']
  return sorted(float(d) for d in map(_num, decays) if d is not None and d <= last)


def sglr_start_epoch(run: Run) -> float | None:
  """x position of the first refined epoch (drawn just before it), or None.

  ``sglr.start_epoch`` is the 0-based index of the first refined epoch, i.e. the
  1-based history epoch ``start_epoch + 1``; the line sits half an epoch before it."""
  if not _truthy(_get(run.config, 'sglr.enabled', False)):
    return None
  start = _num(_get(run.config, 'sglr.start_epoch'))
  if start is None or start + 1 > run.history[-1]['epoch']:
    return None
  return start + 0.5


# ----------------------------------------------------------------------------- plotting


def _figure(nrows: int, ncols: int, width: float, height: float, **kw):
  from matplotlib.figure import Figure  # lazy: tables need no matplotlib
  fig = Figure(figsize=(width, height), dpi=110, layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
  return fig, axes


def _save(fig, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  fig.savefig(path, format='png', facecolor='white', bbox_inches='tight', pad_inches=0.15)
  return path


def _color(i: int) -> str:
  return f'C{i % 10}'


def _select(runs, key: str):
  """(runs, labels, colours) of the runs that have ``key``; colours stay those of the run's
  position among all runs, so a method has one colour in every figure of a report."""
  runs = _as_runs(runs)
  keep = [(r, lab, _color(i)) for i, (r, lab) in enumerate(zip(runs, display_labels(runs)))
          if _has(r, key)]
  return [k[0] for k in keep], [k[1] for k in keep], [k[2] for k in keep]


def _context(runs: Sequence[Run]) -> str:
  """' (CIFAR10, ResNet18, 40% label noise)' if all runs share them, else ''."""
  parts = []
  for key in ('data.name', 'model.name'):
    vals = {str(_get(r.config, key)) for r in runs}
    if len(vals) == 1 and _get(runs[0].config, key) is not None:
      parts.append(vals.pop())
  rates = {_num(_get(r.config, 'data.noise.rate')) for r in runs}
  if len(rates) == 1:
    rate = rates.pop()
    if rate:
      parts.append(f'{_fmt_rate(rate)} label noise')
  return f' ({", ".join(parts)})' if parts else ''


def _mark_events(ax, decays: Iterable[float], starts: Iterable[tuple[float, str]]):
  """LR decays as grey dashed lines, SGLR starts as dotted lines in the run's colour."""
  for x in sorted(set(decays)):
    ax.axvline(x, color='0.45', ls='--', lw=1.0, zorder=1, label='LR decay')
  for x, color in sorted(set(starts)):
    ax.axvline(x, color=color, ls=':', lw=1.6, zorder=1, label='SGLR start')


def _legend_below(fig, axes_list, ncol_max: int = 3):
  """One figure legend under the panels, one entry per distinct label."""
  handles, labels, start_colors = [], [], set()
  for ax in axes_list:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      if lab == 'SGLR start':
        start_colors.add(str(h.get_color()))
      if lab not in labels and not lab.startswith('_'):
        handles.append(h)
        labels.append(lab)
  if len(start_colors) > 1:  # one line per run, each in its colour: a neutral key
    from matplotlib.lines import Line2D
    i = labels.index('SGLR start')
    handles[i] = Line2D([], [], color='0.15', ls=':', lw=1.6)
    labels[i] = "SGLR start (run's colour)"
  if handles:
    n = len(labels)
    ncol = n if n <= ncol_max else math.ceil(n / math.ceil(n / ncol_max))
    fig.legend(handles, labels, loc='outside lower center', ncol=ncol, frameon=False)


def plot_accuracy_curves(runs: Run | Iterable[Run], path: str | os.PathLike) -> str | None:
  """Paper Fig. 2: per method, test natural / test PGD-20 / train adversarial accuracy.

  One panel per run (shared y axis); the shaded band is the robust generalization gap
  (train adversarial minus test PGD-20), the star the best PGD-20 epoch. Returns the path,
  or None (nothing written) when no run has any of the three curves.
  """
  runs = _as_runs(runs)
  labels = display_labels(runs)
  panels = [(r, lab) for r, lab in zip(runs, labels) if any(_has(r, k) for k, *_ in _CURVES)]
  if not panels:
    return None
  n = len(panels)
  ncols = min(n, 3)
  nrows = math.ceil(n / ncols)
  fig, axes = _figure(nrows, ncols, 4.4 * ncols + 0.6, 3.4 * nrows + 1.0, sharey=True)
  flat = list(axes.flat)
  for ax, (run, label) in zip(flat, panels):
    series = {k: _series(run.history, k, 100.0) for k, *_ in _CURVES}
    for key, name, color, ls in _CURVES:
      xs, ys = series[key]
      if xs:
        ax.plot(xs, ys, color=color, ls=ls, lw=1.6, label=name,
                marker='o' if len(xs) <= 12 else None, ms=3)
    tr, te = dict(zip(*series['train_adv_acc'])), dict(zip(*series['test_pgd20_acc']))
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
    _mark_events(ax, lr_decay_epochs(run), [(start, 'tab:purple')] if start is not None else [])
    ax.set_title(label, fontsize=11)
    ax.set_xlabel('Epoch')
    ax.grid(alpha=0.3)
  for row in axes:
    row[0].set_ylabel('Accuracy (%)')
  for ax in flat[n:]:
    ax.set_visible(False)
  for ax in flat[:n]:
    ax.tick_params(labelleft=True)
  _legend_below(fig, flat[:n])
  fig.suptitle('Learning curves: accuracy per epoch' + _context(runs), fontsize=12)
  return _save(fig, path)


def _overlay(ax, runs, labels, colors, key, scale=1.0, ls='-', with_label=True,
             transform=None):
  """One line per run in the run's colour; returns whether anything was drawn."""
  drawn = False
  for run, label, color in zip(runs, labels, colors):
    xs, ys = transform(run) if transform is not None else _series(run.history, key, scale)
    if xs:
      ax.plot(xs, ys, color=color, ls=ls, lw=1.6, label=label if with_label else None,
              marker='o' if len(xs) <= 12 else None, ms=3)
      drawn = True
  return drawn


def _all_events(runs, colors):
  """Decays of all runs; SGLR starts in the run's colour, dark grey where runs share one."""
  decays = [x for r in runs for x in lr_decay_epochs(r)]
  by_x: dict[float, list[int]] = {}
  for i, r in enumerate(runs):
    x = sglr_start_epoch(r)
    if x is not None:
      by_x.setdefault(x, []).append(i)
  starts = [(x, colors[idx[0]] if len(idx) == 1 else '0.15') for x, idx in by_x.items()]
  return decays, starts


def plot_grad_norm(runs: Run | Iterable[Run], path: str | os.PathLike) -> str | None:
  """Paper Fig. 1: gradient norm of the adversarial loss w.r.t. the weights per epoch.

  Second panel: the robust generalization gap (train adversarial minus test PGD-20
  accuracy), which the paper shows widening together with the norm after the LR decay.
  Returns None (nothing written) when no run has ``grad_norm``.
  """
  runs, labels, colors = _select(runs, 'grad_norm')
  if not runs:
    return None

  def gap(run):
    tr = dict(zip(*_series(run.history, 'train_adv_acc', 100.0)))
    te = dict(zip(*_series(run.history, 'test_pgd20_acc', 100.0)))
    common = sorted(set(tr) & set(te))
    return common, [tr[e] - te[e] for e in common]

  with_gap = any(gap(r)[0] for r in runs)
  fig, axes = _figure(1, 2 if with_gap else 1, 11.5 if with_gap else 6.5, 4.4)
  decays, starts = _all_events(runs, colors)
  ax = axes[0, 0]
  _overlay(ax, runs, labels, colors, 'grad_norm')
  _mark_events(ax, decays, starts)
  ax.set_xlabel('Epoch')
  ax.set_ylabel(r'Gradient norm $\|\nabla_\theta \mathcal{L}_{\mathrm{adv}}\|_2$')
  ax.set_title('(a) Gradient norm of the adversarial loss')
  ax.grid(alpha=0.3)
  if with_gap:
    ax = axes[0, 1]
    _overlay(ax, runs, labels, colors, None, transform=gap)
    _mark_events(ax, decays, starts)
    ax.axhline(0, color='0.6', lw=0.8)
    ax.set_xlabel('Epoch')
    ax.set_ylabel('Train adv. − test PGD-20 accuracy (pp)')
    ax.set_title('(b) Robust generalization gap')
    ax.grid(alpha=0.3)
  _legend_below(fig, list(axes.flat))
  fig.suptitle('Gradient norm per epoch' + _context(runs), fontsize=12)
  return _save(fig, path)


def _style_legend(ax, styles: Sequence[tuple[str, str]], loc: str = 'best'):
  """Legend explaining line styles (the colours are the methods, in the figure legend)."""
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], color='0.2', ls=ls, lw=1.6) for ls, _ in styles]
  ax.legend(handles, [name for _, name in styles], loc=loc, fontsize=8, framealpha=0.85)


def plot_noisy_fit(runs: Run | Iterable[Run], path: str | os.PathLike) -> str | None:
  """Paper Fig. 4: fit of the noisy training labels, and test accuracy, per epoch.

  Left: training accuracy on the noisy examples against their noisy labels (memorization;
  solid) and, where logged, against their clean labels (dashed). Right: test natural
  (dashed) and PGD-20 (solid) accuracy. Returns None when no run has ``train_noisy_fit``.
  """
  runs, labels, colors = _select(runs, 'train_noisy_fit')
  if not runs:
    return None
  fig, axes = _figure(1, 2, 11.5, 4.4)
  decays, starts = _all_events(runs, colors)
  ax = axes[0, 0]
  _overlay(ax, runs, labels, colors, 'train_noisy_fit', 100.0, ls='-')
  clean = _overlay(ax, runs, labels, colors, 'train_clean_acc', 100.0, ls='--',
                   with_label=False)
  _mark_events(ax, decays, starts)
  ax.set_xlabel('Epoch')
  ax.set_ylabel('Training accuracy (%)')
  ax.set_title('(a) Fit of the noisy training labels')
  ax.grid(alpha=0.3)
  _style_legend(ax, [('-', 'vs. noisy labels')] + ([('--', 'vs. clean labels')] if clean else []),
                loc='upper left')
  ax = axes[0, 1]
  nat = _overlay(ax, runs, labels, colors, 'test_natural_acc', 100.0, ls='--',
                 with_label=False)
  pgd = _overlay(ax, runs, labels, colors, 'test_pgd20_acc', 100.0, ls='-', with_label=False)
  _mark_events(ax, decays, starts)
  ax.set_xlabel('Epoch')
  ax.set_ylabel('Test accuracy (%)')
  ax.set_title('(b) Test accuracy')
  ax.grid(alpha=0.3)
  styles = ([('--', 'natural')] if nat else []) + ([('-', 'PGD-20')] if pgd else [])
  if styles:
    _style_legend(ax, styles)
  _legend_below(fig, list(axes.flat))
  fig.suptitle('Memorization of noisy labels' + _context(runs), fontsize=12)
  return _save(fig, path)


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
    n = _num(n)
    out.append((i, _num(c), _num(a), 1.0 if n is None else n))
  return out


def ece_from_bins(rel: dict) -> float | None:
  """ECE = sum_b n_b / N * |acc_b - conf_b| (fraction) from a reliability dict."""
  bins = _bins(rel)
  if not bins:
    return None
  used = [(c, a, n) for _, c, a, n in bins if c is not None and a is not None and n > 0]
  total = sum(n for *_, n in used)
  if total <= 0:
    return None
  return sum(n * abs(a - c) for c, a, n in used) / total


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
        ece = _num(res[split].get(f'ece_{kind}'))
        if ece is None:
          ece = ece_from_bins(rel[kind])
        panels.append((split, kind, bins, ece, _num(res[split].get('epoch'))))
  if not panels:
    return None
  rows = [s for s in splits if any(p[0] == s for p in panels)]
  cols = [k for k in kinds if any(p[1] == k for p in panels)]
  fig, axes = _figure(len(rows), len(cols), 4.0 * len(cols) + 0.4, 3.9 * len(rows) + 0.8,
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
  _legend_below(fig, [ax for ax in axes.flat if ax.get_visible()])
  fig.suptitle(f'Reliability: {title or run.label}', fontsize=12)
  return _save(fig, path)


# ----------------------------------------------------------------------------- report


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'run'


def make_report(workdirs: str | os.PathLike | Iterable[str | os.PathLike],
                out_dir: str | os.PathLike) -> list[str]:
  """Write every applicable PNG, ``results_table.json`` and ``report.md`` into out_dir.

  A figure without data (e.g. no ``train_noisy_fit`` in any run) is skipped. Raises
  ValueError if there is no workdir, or one has no history.jsonl. Returns the written paths.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  workdirs = [os.fspath(w) for w in workdirs]
  if not workdirs:
    raise ValueError('make_report needs at least one workdir')
  runs = [load_run(w) for w in workdirs]
  labels = display_labels(runs)
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)

  written: list[str] = []
  figures: list[tuple[str, str]] = []  # (heading, file name)
  for heading, name, fn in (
      ('Learning curves (Fig. 2)', ACCURACY_PNG, plot_accuracy_curves),
      ('Gradient norm (Fig. 1)', GRAD_NORM_PNG, plot_grad_norm),
      ('Memorization of noisy labels (Fig. 4)', NOISY_FIT_PNG, plot_noisy_fit)):
    p = fn(runs, os.path.join(out_dir, name))
    if p:
      written.append(p)
      figures.append((heading, name))
  used: set[str] = set()
  for run, label in zip(runs, labels):
    name = f'reliability_{_slug(label)}.png'
    k = 2
    while name in used:
      name = f'reliability_{_slug(label)}-{k}.png'
      k += 1
    p = plot_reliability(run, os.path.join(out_dir, name), title=label)
    if p:
      used.add(name)
      written.append(p)
      figures.append((f'Reliability: {label}', name))

  table_json = results_table_json(runs)
  p = os.path.join(out_dir, 'results_table.json')
  with open(p, 'w', encoding='utf-8') as f:
    json.dump(table_json, f, indent=2)
  written.append(p)

  md = ['# SGLR report', '', '## Runs', '',
        '| Method | Workdir | Data | Model | Label noise | Epochs | Best PGD-20 epoch |',
        '|:---|:---|:---|:---|---:|---:|---:|']
  for run, label, row in zip(runs, labels, table_json['rows']):
    rate = _num(_get(run.config, 'data.noise.rate'))
    cells = [label.replace('|', '\\|'), f'`{os.path.relpath(run.workdir, out_dir)}`',  # movable
             str(_get(run.config, 'data.name', '-')), str(_get(run.config, 'model.name', '-')),
             _fmt_rate(rate) if rate is not None else '-',
             f"{run.history[-1]['epoch']}"
             + (f" / {_get(run.config, 'train.epochs')}" if _get(run.config, 'train.epochs')
                else ''),
             '-' if row['best_epoch'] is None else str(row['best_epoch'])]
    md.append('| ' + ' | '.join(cells) + ' |')
  md += ['', '## Results (%)', '',
         'Best: checkpoint of highest test PGD-20 accuracy; final: last epoch; '
         'diff = best − final (robust overfitting).', '', results_table(runs).rstrip('\n')]
  cal = _calibration_table(runs)
  if cal:
    md += ['', '## Calibration (ECE, %)', '', cal.rstrip('\n')]
  if figures:
    md += ['', '## Figures']
    for heading, name in figures:
      md += ['', f'### {heading}', '', f'![{heading}]({name})']
  md += ['', 'Table as data: [results_table.json](results_table.json)', '']
  p = os.path.join(out_dir, 'report.md')
  with open(p, 'w', encoding='utf-8') as f:
    f.write('\n'.join(md))
  written.append(p)
  return written


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', help='training workdirs')
  parser.add_argument('--out', required=True, help='output directory')
  args = parser.parse_args(argv)
  for p in make_report(args.workdirs, args.out):
    print(p)


if __name__ == '__main__':
  main()
