"""What the report's figures share: a pyplot-free figure, run colours, event lines, legends.

Matplotlib is used through ``matplotlib.figure.Figure`` (Agg canvas), never pyplot, so
making a report changes no global backend state and needs no display.
"""
from __future__ import annotations

import io
import math
import os
from typing import Iterable, Sequence

from sglr_jax import storage
from sglr_jax.evaluation.results import number
from sglr_jax.report.events import lr_decay_epochs, sglr_start_epoch
from sglr_jax.report.runs import Run, as_runs, display_labels, field, fmt_rate, has, series


def figure(nrows: int, ncols: int, width: float, height: float, **kw):
  from matplotlib.figure import Figure  # lazy: tables need no matplotlib
  fig = Figure(figsize=(width, height), dpi=110, layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
  return fig, axes


def save(fig, path: str | os.PathLike) -> str:
  """Writes ``fig`` as PNG to ``path`` (a local path or a URL); returns the path."""
  path = os.fspath(path)
  kw = {'format': 'png', 'facecolor': 'white', 'bbox_inches': 'tight', 'pad_inches': 0.15}
  if storage.is_url(path):
    buf = io.BytesIO()
    fig.savefig(buf, **kw)
    storage.write_bytes(path, buf.getvalue())
    return path
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  fig.savefig(path, **kw)
  return path


def run_color(i: int) -> str:
  return f'C{i % 10}'


def select(runs, key: str):
  """(runs, labels, colours) of the runs that have ``key``; colours stay those of the run's
  position among all runs, so a method has one colour in every figure of a report."""
  runs = as_runs(runs)
  keep = [(r, lab, run_color(i)) for i, (r, lab) in enumerate(zip(runs, display_labels(runs)))
          if has(r, key)]
  return [k[0] for k in keep], [k[1] for k in keep], [k[2] for k in keep]


def context(runs: Sequence[Run]) -> str:
  """' (CIFAR10, ResNet18, 40% label noise)' if all runs share them, else ''."""
  parts = []
  for key in ('data.name', 'model.name'):
    vals = {str(field(r.config, key)) for r in runs}
    if len(vals) == 1 and field(runs[0].config, key) is not None:
      parts.append(vals.pop())
  rates = {number(field(r.config, 'data.noise.rate')) for r in runs}
  if len(rates) == 1:
    rate = rates.pop()
    if rate:
      parts.append(f'{fmt_rate(rate)} label noise')
  return f' ({", ".join(parts)})' if parts else ''


def mark_events(ax, decays: Iterable[float], starts: Iterable[tuple[float, str]]):
  """LR decays as grey dashed lines, SGLR starts as dotted lines in the run's colour."""
  for x in sorted(set(decays)):
    ax.axvline(x, color='0.45', ls='--', lw=1.0, zorder=1, label='LR decay')
  for x, color in sorted(set(starts)):
    ax.axvline(x, color=color, ls=':', lw=1.6, zorder=1, label='SGLR start')


def legend_below(fig, axes_list, ncol_max: int = 3):
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


def overlay(ax, runs, labels, colors, key, scale=1.0, ls='-', with_label=True,
            transform=None):
  """One line per run in the run's colour; returns whether anything was drawn."""
  drawn = False
  for run, label, color in zip(runs, labels, colors):
    xs, ys = transform(run) if transform is not None else series(run.history, key, scale)
    if xs:
      ax.plot(xs, ys, color=color, ls=ls, lw=1.6, label=label if with_label else None,
              marker='o' if len(xs) <= 12 else None, ms=3)
      drawn = True
  return drawn


def all_events(runs, colors):
  """Decays of all runs; SGLR starts in the run's colour, dark grey where runs share one."""
  decays = [x for r in runs for x in lr_decay_epochs(r)]
  by_x: dict[float, list[int]] = {}
  for i, r in enumerate(runs):
    x = sglr_start_epoch(r)
    if x is not None:
      by_x.setdefault(x, []).append(i)
  starts = [(x, colors[idx[0]] if len(idx) == 1 else '0.15') for x, idx in by_x.items()]
  return decays, starts


def style_legend(ax, styles: Sequence[tuple[str, str]], loc: str = 'best'):
  """Legend explaining line styles (the colours are the methods, in the figure legend)."""
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], color='0.2', ls=ls, lw=1.6) for ls, _ in styles]
  ax.legend(handles, [name for _, name in styles], loc=loc, fontsize=8, framealpha=0.85)
