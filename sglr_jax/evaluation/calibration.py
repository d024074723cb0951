"""Calibration of a checkpoint: ECE on clean and PGD inputs, and the reliability bins.

Computed from the logits ``NaturalPGD.logits`` returned for the accuracies: no second
prediction pass, and the ECE is that of exactly the points the accuracies count.
"""
from __future__ import annotations

from sglr_jax.evaluation import metrics


def run(clean, adv, labels, num_bins: int = 15) -> dict:
  """``ece_clean``, ``ece_adv`` (fractions) and ``reliability`` {clean, adv: bins} from
  clean and adversarial logits ``[M, K]`` of the points with ``labels`` ``[M]``."""
  cal_clean = metrics.calibration(clean, labels, num_bins)
  cal_adv = metrics.calibration(adv, labels, num_bins)
  return {'ece_clean': cal_clean['ece'], 'ece_adv': cal_adv['ece'],
          'reliability': {'clean': cal_clean, 'adv': cal_adv}}
