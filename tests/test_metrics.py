"""Host metrics: masked accuracy and ECE against hand-computed values."""
import numpy as np
import pytest

from sglr_jax.evaluation import metrics


def test_masked_accuracy_ignores_padding():
  logits = np.array([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
  labels = np.array([0, 0, 1])
  assert metrics.masked_accuracy(logits, labels) == 1 / 3
  assert metrics.masked_accuracy(logits, labels, [True, True, False]) == 0.5
  assert np.isnan(metrics.masked_accuracy(logits, labels, [False] * 3))


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
  b = int(np.ceil(0.9 * 15)) - 1
  assert cal['bin_acc'][b] == 0.5 and cal['bin_conf'][b] == pytest.approx(0.9)
  assert cal['bin_acc'][0] == 0.0 and cal['bin_conf'][0] == 0.0  # empty bins read 0


def test_ece_bin_edges_are_right_closed():
  """Bins are (b/n, (b+1)/n]: confidence exactly 0.5 (equal logits) falls in (0, 0.5] of
  two bins, confidence 1.0 in the last."""
  cal = metrics.calibration(np.array([[0.0, 0.0], [100.0, 0.0]]), [1, 0], num_bins=2)
  assert cal['bin_count'] == [1, 1]
  # argmax of equal logits is class 0: wrong (acc 0, conf 0.5); the other right (1, 1)
  assert cal['bin_acc'] == [0.0, 1.0] and cal['bin_conf'] == [0.5, 1.0]
  assert cal['ece'] == 0.25  # (|0 - 0.5| + |1 - 1|) / 2


def test_expected_calibration_error_from_sums():
  # bins: 30 points with summed conf 15, summed correctness 12; 10 with 9 and 6
  assert metrics.expected_calibration_error([15.0, 9.0], [12.0, 6.0], 40) == pytest.approx(0.15)
