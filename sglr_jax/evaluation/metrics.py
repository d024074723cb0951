"""Host-side metrics: masked accuracy and expected calibration error (the one ECE)."""
from __future__ import annotations

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


def expected_calibration_error(conf_sum, acc_sum, total) -> float:
  """ECE = sum_b n_b / N |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / N.

  From per-bin sums, so that ``calibration`` and a reliability diagram read back from
  results.json (per-bin means times counts) share this one formula.
  """
  return float(np.sum(np.abs(np.asarray(acc_sum) - np.asarray(conf_sum))) / total)


def calibration(logits, labels, num_bins: int = 15) -> dict:
  """ECE over ``num_bins`` equal-width confidence bins (Guo et al.), and the
  reliability diagram's per-bin mean confidence, accuracy and count."""
  probs = softmax(logits)  # [M, K]
  conf = probs.max(-1)  # [M]
  correct = (probs.argmax(-1) == np.asarray(labels)).astype(np.float64)  # [M]
  # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 cannot occur (>= 1/K).
  bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  conf_sum = np.bincount(bins, conf, minlength=num_bins)
  acc_sum = np.bincount(bins, correct, minlength=num_bins)
  nz = np.maximum(count, 1)
  ece = expected_calibration_error(conf_sum, acc_sum, max(len(conf), 1))
  return {'ece': ece, 'bin_conf': (conf_sum / nz).tolist(), 'bin_acc': (acc_sum / nz).tolist(),
          'bin_count': count.tolist()}
