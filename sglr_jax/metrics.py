"""Host-side metrics: masked accuracy, expected calibration error, JSONL history."""
from __future__ import annotations

import json
import os

import numpy as np


def masked_accuracy(logits, labels, mask=None) -> float:
  """Fraction of real (``mask``) examples whose argmax equals the label."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  mask = np.ones(len(labels), bool) if mask is None else np.asarray(mask, bool)
  if not mask.any():
    return float('nan')
  return float(np.mean(np.argmax(logits[mask], -1) == labels[mask]))


def softmax(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def calibration(logits, labels, num_bins: int = 15) -> dict:
  """ECE over ``num_bins`` equal-width confidence bins (Guo et al.), and the
  reliability diagram's per-bin mean confidence, accuracy and count."""
  probs = softmax(logits)
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == np.asarray(labels)).astype(np.float64)
  # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 cannot occur (>= 1/K).
  bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  conf_sum = np.bincount(bins, conf, minlength=num_bins)
  acc_sum = np.bincount(bins, correct, minlength=num_bins)
  nz = np.maximum(count, 1)
  ece = float(np.sum(np.abs(acc_sum - conf_sum)) / max(len(conf), 1))
  return {'ece': ece, 'bin_conf': (conf_sum / nz).tolist(), 'bin_acc': (acc_sum / nz).tolist(),
          'bin_count': count.tolist()}


def read_history(workdir: str) -> list[dict]:
  """The history lines, last line per epoch kept (a resumed run may repeat one)."""
  path = os.path.join(workdir, 'history.jsonl')
  if not os.path.exists(path):
    return []
  by_epoch = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        rec = json.loads(line)
        by_epoch[rec['epoch']] = rec
  return [by_epoch[e] for e in sorted(by_epoch)]


def truncate_history(workdir: str, last_epoch: int) -> None:
  """Keeps the lines of epochs <= ``last_epoch``: a resume re-runs the rest."""
  rows = [r for r in read_history(workdir) if r['epoch'] <= last_epoch]
  path = os.path.join(workdir, 'history.jsonl')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')
  os.replace(tmp, path)


def append_history(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, 'history.jsonl'), 'a') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())
