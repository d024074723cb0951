"""sglr_jax.report.figures: each plot writes a real PNG, or nothing without its data."""
from __future__ import annotations

import pytest

import report_support as rs
from report_support import three_runs  # noqa: F401  (a fixture)
from sglr_jax.evaluation import metrics
from sglr_jax.report.figures import calibration_curves, grad_norm, reliability
from sglr_jax.report.runs import load_run


def test_ece_from_bins():
  rel = {'bin_conf': [None, 0.5, 0.9], 'bin_acc': [None, 0.4, 0.6], 'bin_count': [0, 30, 10]}
  # (30 * 0.1 + 10 * 0.3) / 40 = 0.15
  assert reliability.ece_from_bins(rel) == pytest.approx(0.15)
  assert reliability.ece_from_bins({'bin_conf': [], 'bin_acc': []}) is None


def test_ece_from_bins_reads_back_calibration():
  """The bins evaluate writes give back the ECE it computed (the one formula)."""
  lg = lambda p: [p, 1 - p]
  logits = [lg(2.0), lg(0.5), lg(1.5), lg(-1.0), lg(0.1)]
  cal = metrics.calibration(logits, [0, 1, 0, 0, 1])
  assert reliability.ece_from_bins(cal) == pytest.approx(cal['ece'], abs=1e-12)


def test_plot_functions_return_paths(three_runs, tmp_path):  # noqa: F811
  runs = [load_run(d) for d in three_runs]
  p = grad_norm.plot_grad_norm(runs[:1], tmp_path / 'sub' / 'g.png')
  assert p == str(tmp_path / 'sub' / 'g.png')
  rs.assert_good_png(p)
  assert calibration_curves.plot_ece_curves([], tmp_path / 'e.png') is None
  rs.assert_good_png(calibration_curves.plot_ece_curves(runs, tmp_path / 'e.png'))
  # results.json with reliability only for the final checkpoint's clean inputs
  res = runs[0].results
  res['best'].pop('reliability')
  res['final']['reliability'].pop('adv')
  p = reliability.plot_reliability(runs[0], tmp_path / 'rel.png')
  w, h = rs.png_size(p)
  assert w < h * 1.6  # a single panel, not a 2x2 grid
