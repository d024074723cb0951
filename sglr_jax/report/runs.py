"""A training workdir, read tolerantly: its config, history and results, and its label.

Reports are made from runs that are still going, crashed, or were written by older code,
so nothing here fails on a missing file, a null value or a torn last history line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Iterable, Sequence

from sglr_jax import history, storage
from sglr_jax.evaluation.results import number

_OBJECTIVE_LABELS = {
    'at': 'PGD-AT', 'pgd_at': 'PGD-AT', 'pgdat': 'PGD-AT', 'madry': 'PGD-AT', 'pgd': 'PGD-AT',
    'trades': 'TRADES',
    'ls': 'PGD-AT + LS', 'at_ls': 'PGD-AT + LS', 'label_smoothing': 'PGD-AT + LS',
    'te': 'PGD-AT + TE', 'at_te': 'PGD-AT + TE',
    'mart': 'MART',
    'standard': 'Standard', 'ce': 'Standard', 'erm': 'Standard',
}


@dataclasses.dataclass
class Run:
  """One workdir, parsed. ``history`` is deduplicated by epoch and sorted."""
  label: str
  config: dict
  history: list[dict]
  results: dict | None
  workdir: str = ''


def field(d: Any, dotted: str, default: Any = None) -> Any:
  """``field(cfg, 'a.b.c')`` that never raises on missing or non-dict levels."""
  for part in dotted.split('.'):
    if not isinstance(d, dict) or part not in d:
      return default
    d = d[part]
  return default if d is None else d


def truthy(x: Any) -> bool:
  if isinstance(x, str):
    return x.strip().lower() in ('1', 'true', 'yes', 'on')
  return bool(x)


def _read_json(path: str) -> Any:
  """Parsed JSON, or None if the file is absent or unreadable (warns on the latter)."""
  if not storage.isfile(path):
    return None
  try:
    return json.loads(storage.read_text(path))
  except (OSError, ValueError) as e:
    warnings.warn(f'{path}: unreadable JSON ({e}); ignored')
    return None


def read_history(path: str) -> list[dict]:
  """Epoch records of a history file, read tolerantly (``history.read_records``)."""
  return history.read_records(path, strict=False)


def derive_label(config: dict, fallback: str = 'run') -> str:
  """Config ``name`` if set, else e.g. 'PGD-AT', 'PGD-AT + SGLR', 'TRADES + SGLR'."""
  name = config.get('name') if isinstance(config, dict) else None
  if isinstance(name, str) and name.strip():
    return name.strip()
  obj = field(config, 'objective.name')
  if obj is None or not str(obj).strip():
    base = fallback
  else:
    key = str(obj).strip().lower().replace('-', '_').replace(' ', '_')
    base = _OBJECTIVE_LABELS.get(key, str(obj).strip().upper())
  if truthy(field(config, 'sglr.enabled', False)):
    base += ' + SGLR'
  return base


def load_run(workdir: str | os.PathLike) -> Run:
  """Parse one workdir (a local path or a URL); ValueError if it has no history.jsonl or
  no epoch in it."""
  workdir = os.fspath(workdir)
  hist_path = storage.join(workdir, 'history.jsonl')
  if not storage.isfile(hist_path):
    why = 'does not exist' if not storage.isdir(workdir) else 'has no history.jsonl'
    raise ValueError(
        f'workdir {workdir!r} {why}: not a training workdir, or training has not '
        'finished an epoch yet')
  history = read_history(hist_path)
  if not history:
    raise ValueError(f'{hist_path} holds no epoch record (empty or unparsable)')
  config = _read_json(storage.join(workdir, 'config.json'))
  config = config if isinstance(config, dict) else {}
  results = _read_json(storage.join(workdir, 'results.json'))
  results = results if isinstance(results, dict) else None
  fallback = storage.basename(storage.abspath(workdir)) or 'run'
  return Run(label=derive_label(config, fallback), config=config, history=history,
             results=results, workdir=workdir)


def as_runs(runs: Run | Iterable[Run]) -> list[Run]:
  return [runs] if isinstance(runs, Run) else list(runs)


def fmt_rate(rate: float) -> str:
  return f'{100 * rate:g}%'


def series(history: Sequence[dict], key: str, scale: float = 1.0):
  """(epochs, values) of one history key, skipping epochs where it is missing."""
  xs, ys = [], []
  for rec in history:
    v = number(rec.get(key))
    if v is not None:
      xs.append(rec['epoch'])
      ys.append(v * scale)
  return xs, ys


def has(run: Run, key: str) -> bool:
  return any(number(rec.get(key)) is not None for rec in run.history)


def _clashes(labels: Sequence[str]) -> list[tuple[str, list[int]]]:
  """(label, indices) of each label that several runs share."""
  groups: dict[str, list[int]] = {}
  for i, lab in enumerate(labels):
    groups.setdefault(lab, []).append(i)
  return [(lab, idx) for lab, idx in groups.items() if len(idx) > 1]


def display_labels(runs: Sequence[Run]) -> list[str]:
  """Run labels made unique: duplicates get the config fields that tell them apart."""
  labels = [r.label for r in runs]
  fields = (
      ('data.name', lambda v: str(v)),
      ('data.noise.rate', lambda v: f'noise {fmt_rate(v)}' if number(v) is not None else None),
      ('model.name', lambda v: str(v)),
      ('schedule.name', lambda v: str(v)),
      ('sglr.start_epoch', lambda v: f'start {v}'),
      ('train.epochs', lambda v: f'{v} ep'),
  )
  for lab, idx in _clashes(labels):
    parts: dict[int, list[str]] = {i: [] for i in idx}
    for key, fmt in fields:
      vals = [field(runs[i].config, key) for i in idx]
      if len({json.dumps(v, sort_keys=True) for v in vals}) > 1:
        for i, v in zip(idx, vals):
          s = fmt(v) if v is not None else None
          parts[i].append(s if s else f'{key.split(".")[-1]}=?')
    for i in idx:
      if parts[i]:
        labels[i] = f'{lab} ({", ".join(parts[i])})'
  # Still equal (same config): the workdir's name, then a counter.
  for stage in ('dir', 'count'):
    for lab, idx in _clashes(labels):
      for n, i in enumerate(idx):
        if stage == 'dir':
          base = storage.basename(storage.abspath(runs[i].workdir)) if runs[i].workdir else ''
          labels[i] = f'{lab} [{base}]' if base else f'{lab} #{n + 1}'
        else:
          labels[i] = f'{lab} #{n + 1}'
  return labels
