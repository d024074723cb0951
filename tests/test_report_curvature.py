"""The per-epoch IIW / Hessian trace figure: a real PNG with the panels that have data,
nothing without them."""
from __future__ import annotations

import os

import report_support as rs
from sglr_jax.report.figures import curvature
from sglr_jax.report.runs import load_run


def _run(tmp_path, name, keys=('iiw', 'hessian_trace'), every=2, schedule='piecewise'):
  hist = rs.history(epochs=20)
  for r in hist:
    if r['epoch'] % every == 0:
      e = r['epoch']
      vals = {'iiw': 1e-3 * 1.5 ** e, 'hessian_trace': 50.0 + 10 * (e > 15) - e}
      r.update({k: vals[k] for k in keys})
  return load_run(rs.write_run(tmp_path / name, rs.config(name=name, schedule=schedule), hist))


def test_no_run_with_the_keys_writes_nothing(tmp_path):
  runs = [_run(tmp_path, 'a', keys=())]
  assert curvature.plot_curvature(runs, tmp_path / 'c.png') is None
  assert not os.path.exists(tmp_path / 'c.png')


def test_three_panels_with_iiw_and_the_trace(tmp_path):
  runs = [_run(tmp_path, 'PGD-AT piecewise'), _run(tmp_path, 'none', keys=()),
          _run(tmp_path, 'PGD-AT cosine', schedule='cosine', every=1)]
  p = curvature.plot_curvature(runs, tmp_path / 'sub' / 'c.png')
  assert p == str(tmp_path / 'sub' / 'c.png')
  rs.assert_good_png(p)
  w, h = rs.png_size(p)
  assert w > 2.2 * h  # IIW, gradient norm, Hessian trace side by side


def test_only_the_trace_is_one_panel(tmp_path):
  p = curvature.plot_curvature([_run(tmp_path, 'a', keys=('hessian_trace',))],
                               tmp_path / 'c.png')
  rs.assert_good_png(p)
  w, h = rs.png_size(p)
  assert w < 1.6 * h
