"""The per-epoch history of a run: ``WORKDIR/history.jsonl``, one JSON object per epoch.

``append_history`` also writes the record's numbers to TensorBoard event files
(``WORKDIR/tensorboard/epoch/``, see ``sglr_jax.tensorboard``): one interface, two views.
The workdir may be a URL (``sglr_jax.storage``): there an append rewrites the object.
"""
from __future__ import annotations

import json
import os
import warnings

from sglr_jax import storage, strict_json
from sglr_jax import tensorboard


def read_history(workdir: str, strict: bool = True) -> list[dict]:
  """The epoch records of ``WORKDIR/history.jsonl``, last line per epoch kept (a resumed
  run may repeat one), sorted by epoch; [] without the file."""
  path = storage.join(workdir, 'history.jsonl')
  return read_records(path, strict) if storage.exists(path) else []


def read_records(path: str, strict: bool = True) -> list[dict]:
  """Epoch records of a history file; the last line of an epoch wins.

  ``strict``: a line that is not a JSON object with an integer ``epoch`` raises (training
  resumes from the history, so it must not guess). Otherwise (reports, made from runs
  still going or killed mid-write) such lines, a torn last line among them, are skipped
  with one warning.
  """
  by_epoch: dict[int, dict] = {}
  bad = 0
  with storage.open_file(path, 'r') as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
        epoch = rec['epoch']
        if isinstance(epoch, bool) or not float(epoch).is_integer():
          raise ValueError(f'epoch {epoch!r} is not an integer')
      except (ValueError, TypeError, KeyError) as e:
        if strict:
          raise ValueError(f'{path}: unreadable history line {line[:80]!r} ({e})') from None
        bad += 1
        continue
      by_epoch[int(epoch)] = dict(rec, epoch=int(epoch))
  if bad:
    warnings.warn(f'{path}: skipped {bad} unparsable line(s)')
  return [by_epoch[e] for e in sorted(by_epoch)]


def truncate_history(workdir: str, last_epoch: int) -> None:
  """Keeps the lines of epochs <= ``last_epoch``: a resume re-runs the rest."""
  rows = [r for r in read_history(workdir) if r['epoch'] <= last_epoch]
  path = storage.join(workdir, 'history.jsonl')
  if storage.is_url(path):  # an object is replaced whole
    storage.write_text(path, ''.join(strict_json.dumps(r) + '\n' for r in rows))
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    for r in rows:
      f.write(strict_json.dumps(r) + '\n')
  os.replace(tmp, path)


def append_history(workdir: str, record: dict, events: bool = True) -> None:
  """Appends one epoch's line (strict JSON: a non-finite number is written as null) and,
  with ``events``, the record's scalars to TensorBoard at step ``record['epoch']``."""
  storage.append_text(storage.join(workdir, 'history.jsonl'), strict_json.dumps(record) + '\n')
  if events:
    tensorboard.write_epoch(workdir, record)
