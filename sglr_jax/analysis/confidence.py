"""The predicted probability of the labelled class (paper Fig. B.3): over-confident
hard-label training piles it at 1 on the training labels, noisy ones included;
softened labels keep mass below 1."""
from __future__ import annotations

import numpy as np

from sglr_jax.evaluation.metrics import softmax

__all__ = ['labelled_probability', 'density']


def labelled_probability(logits, labels):
  """``softmax(logits)[i, labels[i]]`` ``[M]``."""
  p = softmax(logits)  # [M, K]
  labels = np.asarray(labels)
  return p[np.arange(len(labels)), labels]


def density(values, bins: int = 50) -> dict:
  """A histogram density of ``values`` in [0, 1]: ``{'edges': [bins + 1], 'density':
  [bins]}`` with ``sum(density * width) == 1``."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError('density of no values')
  d, edges = np.histogram(values, bins=bins, range=(0.0, 1.0), density=True)
  return {'edges': edges.tolist(), 'density': d.tolist()}
