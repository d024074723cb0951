"""sglr_jax.report.make_report: every figure and table of a set of workdirs."""
from __future__ import annotations

import json
import os

import report_support as rs
from report_support import three_runs  # noqa: F401  (a fixture)
from sglr_jax import report
from sglr_jax.report import tables
from sglr_jax.report.figures import curves, grad_norm, noisy_fit, reliability
from sglr_jax.report.runs import load_run


def test_make_report_writes_everything(three_runs, tmp_path):  # noqa: F811
  out = tmp_path / 'report'
  paths = report.make_report(three_runs, out)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted([curves.FILE_NAME, grad_norm.FILE_NAME, noisy_fit.FILE_NAME,
                          'ece_curves.png', 'reliability_pgd-at.png', 'results_table.json',
                          'report.md'])
  for p in paths:
    assert os.path.isfile(p)
    if p.endswith('.png'):
      rs.assert_good_png(p)
  md = (out / 'report.md').read_text()
  assert tables.results_table([load_run(d) for d in three_runs]).strip() in md
  for n in names:
    if n.endswith('.png'):
      assert f']({n})' in md
  assert '## Calibration' in md
  for d in three_runs:  # workdirs relative to the report, so the folder can be moved
    assert f'`{os.path.relpath(d, out)}`' in md and str(tmp_path) not in md
  js = json.loads((out / 'results_table.json').read_text())
  assert [r['method'] for r in js['rows']] == ['PGD-AT', 'PGD-AT + SGLR', 'TRADES + SGLR']


def test_missing_keys_are_skipped(tmp_path):
  # No grad_norm, no noisy fit, nulls and gaps in the rest, no config, no results.
  hist = [{'epoch': 1, 'lr': 0.1, 'test_natural_acc': 0.5, 'test_pgd20_acc': None},
          {'epoch': 2, 'lr': None, 'train_adv_acc': 0.3},
          {'epoch': 3, 'test_natural_acc': 0.6, 'test_pgd20_acc': 0.3, 'grad_norm': None},
          {'epoch': 4, 'test_natural_acc': float('nan'), 'test_pgd20_acc': 'oops'}]
  d = rs.write_run(tmp_path / 'sparse', None, hist)
  run = load_run(d)
  assert grad_norm.plot_grad_norm([run], tmp_path / 'g.png') is None
  assert noisy_fit.plot_noisy_fit([run], tmp_path / 'n.png') is None
  assert reliability.plot_reliability(run, tmp_path / 'r.png') is None
  assert not (tmp_path / 'g.png').exists()
  paths = report.make_report([d], tmp_path / 'out')
  assert sorted(os.path.basename(p) for p in paths) == [
      curves.FILE_NAME, 'report.md', 'results_table.json']
  rs.assert_good_png(paths[0])
  _, rows = rs.table_rows((tmp_path / 'out' / 'report.md').read_text().split('## Results')[1])
  # best PGD-20 = epoch 3 (only finite value), final = epoch 3 (last finite test value)
  assert rows['sparse †'] == ['60.0', '60.0', '0.0', '30.0', '30.0', '0.0']
  # a workdir with nothing plottable at all: no figure, still a report
  d2 = rs.write_run(tmp_path / 'bare', None, [{'epoch': 1, 'lr': 0.1}])
  paths = report.make_report([d2], tmp_path / 'out2')
  assert sorted(os.path.basename(p) for p in paths) == ['report.md', 'results_table.json']


def test_has_no_command_line():
  """The one command line is ``run.py --mode=report``."""
  assert not hasattr(report, 'main')
