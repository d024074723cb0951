"""Host metrics: masked accuracy and ECE against hand-computed values."""
import numpy as np

from sglr_jax import metrics


def test_masked_accuracy_ignores_padding():
  logits = np.array([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
  labels = np.array([0, 0, 1])
  assert metrics.masked_accuracy(logits, labels) == 1 / 3
  assert metrics.masked_accuracy(logits, labels, [True, True, False]) == 0.5


def test_ece_hand_computed():
  # two-class logits with confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct)
  lg = lambda p: np.log([p, 1 - p])
  logits = np.stack([lg(0.9), lg(0.9), lg(0.6)])
  labels = np.array([0, 1, 0])
  cal = metrics.calibration(logits, labels, num_bins=15)
  # bin of 0.9: acc 0.5, conf 0.9, 2 points; bin of 0.6: acc 1, conf 0.6, 1 point
  expected = (2 * abs(0.5 - 0.9) + 1 * abs(1.0 - 0.6)) / 3
  np.testing.assert_allclose(cal['ece'], expected, atol=1e-9)
  assert sum(cal['bin_count']) == 3
  assert cal['bin_count'][int(np.ceil(0.9 * 15)) - 1] == 2
