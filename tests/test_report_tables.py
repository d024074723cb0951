"""sglr_jax.report.tables: the Best / Final / Diff table of several runs, hand-computed."""
from __future__ import annotations

import pytest

import report_support as rs
from report_support import three_runs  # noqa: F401  (a fixture)
from sglr_jax.report import tables
from sglr_jax.report.runs import load_run


def test_results_table_numbers(three_runs):  # noqa: F811
  runs = [load_run(d) for d in three_runs]
  md = tables.results_table(runs)
  header, rows = rs.table_rows(md)
  assert header == ('| Method | Natural best | final | diff | PGD-20 best | final | diff '
                    '| AutoAttack best | final | diff |')
  # Hand-computed: 80.71 -> 80.7, 82.43 -> 82.4, diff -1.72 -> -1.7; 50.73-41.38 = 9.35 -> 9.3
  # (9.349999 in binary), 47.68-40.21 = 7.47 -> 7.5
  assert rows['PGD-AT'] == ['80.7', '82.4', '-1.7', '50.7', '41.4', '9.3', '47.7', '40.2', '7.5']
  # 82.9-83.04 = -0.14 -> -0.1; 56.44-55.86 = 0.58 -> 0.6; no AutoAttack -> '-'
  assert rows['PGD-AT + SGLR'] == ['82.9', '83.0', '-0.1', '56.4', '55.9', '0.6', '-', '-', '-']
  # TRADES + SGLR has no results.json: best / final from the history (dagger row)
  hist = load_run(three_runs[2]).history
  best = max(hist, key=lambda r: r['test_pgd20_acc'])
  final = hist[-1]
  exp = [100 * best['test_natural_acc'], 100 * final['test_natural_acc'], None,
         100 * best['test_pgd20_acc'], 100 * final['test_pgd20_acc'], None]
  exp[2], exp[5] = exp[0] - exp[1], exp[3] - exp[4]
  got = rows['TRADES + SGLR †']
  assert got[:6] == [f'{v:.1f}' if f'{v:.1f}' != '-0.0' else '0.0' for v in exp]
  assert got[6:] == ['-', '-', '-']
  assert '† no results.json' in md
  assert md.endswith('\n\n' + tables.HISTORY_NOTE + '\n')

  js = tables.results_table_json(runs)
  assert js['metrics'] == ['natural_acc', 'pgd20_acc', 'autoattack_acc']
  r0 = js['rows'][0]
  assert r0['method'] == 'PGD-AT' and r0['source'] == 'results' and r0['best_epoch'] == 16
  assert r0['pgd20_acc']['best'] == pytest.approx(50.73)
  assert r0['pgd20_acc']['diff'] == pytest.approx(9.35)
  assert r0['ece_adv'] == {'best': pytest.approx(8.0), 'final': pytest.approx(10.0)}
  r2 = js['rows'][2]
  assert r2['source'] == 'history' and r2['best_epoch'] == best['epoch']
  assert r2['final_epoch'] == 30 and r2['autoattack_acc']['best'] is None


def test_autoattack_column_only_when_present(three_runs):  # noqa: F811
  runs = [load_run(d) for d in three_runs[1:]]
  header, rows = rs.table_rows(tables.results_table(runs))
  assert 'AutoAttack' not in header
  assert all(len(cells) == 6 for cells in rows.values())
  assert tables.results_table_json(runs)['metrics'] == ['natural_acc', 'pgd20_acc']
  assert '†' not in tables.results_table(runs[:1])  # from results.json: no note


def test_diff_computed_when_results_lack_it(tmp_path):
  d = rs.write_run(tmp_path / 'r', rs.config(), [{'epoch': 1}],
                   rs.results({'natural_acc': 0.5, 'pgd20_acc': 0.3},
                              {'natural_acc': 0.4, 'pgd20_acc': 0.301}, diff=False, ece=False))
  _, rows = rs.table_rows(tables.results_table(load_run(d)))
  assert rows['PGD-AT'] == ['50.0', '40.0', '10.0', '30.0', '30.1', '-0.1']
  # A stored diff is used only where best or final is missing; else the row is consistent.
  res = rs.results({'natural_acc': 0.5, 'pgd20_acc': 0.3}, {'natural_acc': 0.4}, ece=False)
  res['diff'] = {'natural_acc': 0.2, 'pgd20_acc': 0.05}
  d = rs.write_run(tmp_path / 's', rs.config(), [{'epoch': 1}], res)
  _, rows = rs.table_rows(tables.results_table(load_run(d)))
  assert rows['PGD-AT'] == ['50.0', '40.0', '10.0', '30.0', '-', '5.0']


def test_calibration_table_only_runs_with_ece(three_runs):  # noqa: F811
  runs = [load_run(d) for d in three_runs]
  header, rows = rs.table_rows(tables.calibration_table(runs))
  assert header == '| Method | ECE clean best | final | ECE PGD-20 best | final |'
  # _results: ece_clean 0.03 (best) / 0.04 (final), ece_adv 0.08 / 0.10; only PGD-AT has them
  assert rows == {'PGD-AT': ['3.0', '4.0', '8.0', '10.0']}
  assert tables.calibration_table(runs[1:]) is None


def test_runs_overview_cells(three_runs, tmp_path):  # noqa: F811
  runs = [load_run(d) for d in three_runs]
  rows = tables.results_table_json(runs)['rows']
  md = tables.runs_overview(runs, [r['method'] for r in rows], rows, str(tmp_path / 'report'))
  _, cells = rs.table_rows(md)
  # config: mnist, wide_cnn, noise 0.4, 30 epochs planned, 30 in the history; best epoch 16
  assert cells['PGD-AT'] == ['`../at`', 'mnist', 'wide_cnn', '40%', '30 / 30', '16']
