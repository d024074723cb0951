"""Plots (PNG) and markdown/JSON result tables from training workdirs.

Reads what training and evaluation leave in a workdir (``runs``): ``config.json``,
``history.jsonl`` (one JSON object per epoch; any key but ``epoch`` may be missing or null:
the curve simply has no point there) and, optionally, ``results.json`` from ``evaluate``.
The figures follow the paper: learning curves with LR decays and the SGLR start marked
(Fig. 2), gradient norm of the adversarial loss (Fig. 1), fit of the noisy labels (Fig. 4),
reliability diagrams (appendix B.2). The command line is ``run.py --mode=report``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable

from sglr_jax import storage
from sglr_jax.report import tables
from sglr_jax.report.figures import calibration_curves, curvature, curves, grad_norm, noisy_fit
from sglr_jax.report.figures import reliability
from sglr_jax.report.runs import Run, display_labels, load_run

__all__ = ['Run', 'load_run', 'make_report']

# (heading in report.md, file name, plot function) of the figures over all runs.
_FIGURES = (
    ('Learning curves (Fig. 2)', curves.FILE_NAME, curves.plot_accuracy_curves),
    ('Gradient norm (Fig. 1)', grad_norm.FILE_NAME, grad_norm.plot_grad_norm),
    ('Information in weights and Hessian trace (Fig. 1, B.7)', curvature.FILE_NAME,
     curvature.plot_curvature),
    ('Memorization of noisy labels (Fig. 4)', noisy_fit.FILE_NAME, noisy_fit.plot_noisy_fit),
    ('Calibration over training (Fig. B.2)', calibration_curves.FILE_NAME,
     calibration_curves.plot_ece_curves),
)


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'run'


def _reliability_figures(runs, labels, out_dir: str):
  """[(heading, path)] of one reliability figure per run that has the bins."""
  used: set[str] = set()
  out = []
  for run, label in zip(runs, labels):
    name = f'reliability_{_slug(label)}.png'
    k = 2
    while name in used:
      name = f'reliability_{_slug(label)}-{k}.png'
      k += 1
    p = reliability.plot_reliability(run, storage.join(out_dir, name), title=label)
    if p:
      used.add(name)
      out.append((f'Reliability: {label}', p))
  return out


def make_report(workdirs: str | os.PathLike | Iterable[str | os.PathLike],
                out_dir: str | os.PathLike) -> list[str]:
  """Write every applicable PNG, ``results_table.json`` and ``report.md`` into out_dir.

  A figure without data (e.g. no ``train_noisy_fit`` in any run) is skipped. Raises
  ValueError if there is no workdir, or one has no history.jsonl. Returns the written paths.
  Workdirs and ``out_dir`` may be URLs (``gs://``).
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  workdirs = [os.fspath(w) for w in workdirs]
  if not workdirs:
    raise ValueError('make_report needs at least one workdir')
  runs = [load_run(w) for w in workdirs]
  labels = display_labels(runs)
  out_dir = os.fspath(out_dir)
  storage.makedirs(out_dir)

  figures = []  # (heading, path)
  for heading, name, plot in _FIGURES:
    p = plot(runs, storage.join(out_dir, name))
    if p:
      figures.append((heading, p))
  figures += _reliability_figures(runs, labels, out_dir)
  written = [p for _, p in figures]

  table_json = tables.results_table_json(runs)
  p = storage.join(out_dir, 'results_table.json')
  storage.write_text(p, json.dumps(table_json, indent=2))
  written.append(p)

  md = ['# SGLR report', '', '## Runs', '',
        tables.runs_overview(runs, labels, table_json['rows'], out_dir).rstrip('\n')]
  md += ['', '## Results (%)', '',
         'Best: checkpoint of highest test PGD-20 accuracy; final: last epoch; '
         'diff = best − final (robust overfitting).', '',
         tables.results_table(runs).rstrip('\n')]
  cal = tables.calibration_table(runs)
  if cal:
    md += ['', '## Calibration (ECE, %)', '', cal.rstrip('\n')]
  if figures:
    md += ['', '## Figures']
    for heading, path in figures:
      name = storage.basename(path)
      md += ['', f'### {heading}', '', f'![{heading}]({name})']
  md += ['', 'Table as data: [results_table.json](results_table.json)', '']
  p = storage.join(out_dir, 'report.md')
  storage.write_text(p, '\n'.join(md))
  written.append(p)
  return written
