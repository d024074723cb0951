"""Tests for sglr_jax.report on synthetic workdirs (no training needed)."""
from __future__ import annotations

import json
import math
import os
import struct

import pytest

from sglr_jax import report

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


# ----------------------------------------------------------------------------- helpers


def _config(objective='at', sglr=False, name='', start=12, epochs=30, noise=0.4,
            schedule='piecewise'):
  return {
      'name': name,
      'objective': {'name': objective},
      'sglr': {'enabled': sglr, 'start_epoch': start},
      'schedule': {'name': schedule, 'decay_epochs': [15, 22]},
      'train': {'epochs': epochs},
      'data': {'name': 'mnist', 'noise': {'rate': noise}},
      'model': {'name': 'wide_cnn'},
  }


def _history(epochs=30, sglr=False, noisy=True, lr_decays=(15, 22)):
  """Robust overfitting after the first decay for PGD-AT; SGLR holds on."""
  recs = []
  for e in range(1, epochs + 1):
    lr = 0.1 * 0.1 ** sum(e > d for d in lr_decays)
    rise = 1 - math.exp(-e / 5)
    over = 0.0 if sglr else max(0, e - lr_decays[0]) / epochs
    rec = {
        'epoch': e, 'lr': lr, 'train_loss': 2.0 - 1.2 * rise,
        'train_adv_acc': 0.3 + 0.3 * rise + (0.6 * over if not sglr else 0.02),
        'test_natural_acc': 0.5 + 0.3 * rise - 0.2 * over,
        'test_pgd20_acc': 0.2 + 0.3 * rise - 0.4 * over,
        'grad_norm': 1.0 + 0.1 * rise + 4 * over + 0.05 * (e % 3),
        'epoch_time_s': 1.5,
    }
    if noisy:
      rec['train_noisy_fit'] = 0.1 + 0.85 * over + 0.05 * rise
      rec['train_clean_acc'] = 0.5 + 0.3 * rise - 0.3 * over
    recs.append(rec)
  return recs


def _reliability(seed=0, n=15):
  conf = [(i + 0.5) / n for i in range(n)]
  acc = [max(0.0, min(1.0, c - 0.05 - 0.01 * ((i + seed) % 4))) for i, c in enumerate(conf)]
  count = [0 if i < 2 else 10 * (i + 1) for i in range(n)]
  conf[0] = acc[0] = None  # an empty bin may be null
  return {'bin_conf': conf, 'bin_acc': acc, 'bin_count': count}


def _results(best, final, best_epoch=16, final_epoch=30, diff=True, ece=True):
  """best/final: {metric: fraction}."""
  out = {'best': {'epoch': best_epoch, **best}, 'final': {'epoch': final_epoch, **final}}
  if ece:
    for split, k in (('best', 0), ('final', 1)):
      out[split].update({'ece_clean': 0.03 + 0.01 * k, 'ece_adv': 0.08 + 0.02 * k,
                         'reliability': {'clean': _reliability(k), 'adv': _reliability(k + 1)}})
  if diff:
    out['diff'] = {m: best[m] - final[m] for m in best if m in final}
  return out


def _write_run(d, config=None, history=None, results=None, raw_history=None):
  os.makedirs(d, exist_ok=True)
  if config is not None:
    with open(os.path.join(d, 'config.json'), 'w') as f:
      json.dump(config, f)
  with open(os.path.join(d, 'history.jsonl'), 'w') as f:
    if raw_history is not None:
      f.write(raw_history)
    else:
      for rec in history:
        f.write(json.dumps(rec) + '\n')
  if results is not None:
    with open(os.path.join(d, 'results.json'), 'w') as f:
      json.dump(results, f)
  return str(d)


def _png_size(path):
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == PNG_MAGIC, f'{path} is not a PNG'
  assert head[12:16] == b'IHDR'
  return struct.unpack('>II', head[16:24])


def _assert_good_png(path):
  w, h = _png_size(path)
  assert 500 <= w <= 3000 and 300 <= h <= 3000, (path, w, h)
  assert os.path.getsize(path) > 10_000, path  # not a blank canvas
  import matplotlib.image as mpimg
  img = mpimg.imread(path)  # [H, W, C] in [0, 1]
  assert img.shape[:2] == (h, w)
  assert img[..., :3].std() > 0.05, f'{path} looks empty'


@pytest.fixture
def three_runs(tmp_path):
  at = _write_run(
      tmp_path / 'at', _config('at'), _history(),
      _results({'natural_acc': 0.8071, 'pgd20_acc': 0.5073, 'autoattack_acc': 0.4768},
               {'natural_acc': 0.8243, 'pgd20_acc': 0.4138, 'autoattack_acc': 0.4021}))
  sglr = _write_run(
      tmp_path / 'sglr', _config('at', sglr=True), _history(sglr=True),
      _results({'natural_acc': 0.829, 'pgd20_acc': 0.5644},
               {'natural_acc': 0.8304, 'pgd20_acc': 0.5586}, ece=False))
  trades = _write_run(tmp_path / 'trades', _config('trades', sglr=True),
                      _history(sglr=True, noisy=False))  # no results.json yet
  return [at, sglr, trades]


def _table_rows(md):
  """{method: [cells]} from the markdown table."""
  rows = {}
  lines = [l for l in md.splitlines() if l.startswith('|')]
  for line in lines[2:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    rows[cells[0]] = cells[1:]
  return lines[0], rows


# ----------------------------------------------------------------------------- loading


def test_resume_duplicates_keep_last_and_sort(tmp_path):
  lines = [{'epoch': 1, 'lr': 0.1, 'test_pgd20_acc': 0.1},
           {'epoch': 2, 'lr': 0.1, 'test_pgd20_acc': 0.2},
           {'epoch': 3, 'lr': 0.1, 'test_pgd20_acc': 0.3},
           # resumed from the end of epoch 1: epochs 2 and 3 are written again
           {'epoch': 2, 'lr': 0.1, 'test_pgd20_acc': 0.25},
           {'epoch': 3, 'lr': 0.1, 'test_pgd20_acc': 0.35},
           {'epoch': 4, 'lr': 0.01, 'test_pgd20_acc': 0.4}]
  raw = '\n'.join(json.dumps(r) for r in lines) + '\n\n{"epoch": 5, "lr": 0.0'  # torn write
  d = _write_run(tmp_path / 'r', _config(), raw_history=raw)
  with pytest.warns(UserWarning, match='unparsable'):
    run = report.load_run(d)
  assert [r['epoch'] for r in run.history] == [1, 2, 3, 4]
  assert [r['test_pgd20_acc'] for r in run.history] == [0.1, 0.25, 0.35, 0.4]
  assert run.results is None and run.label == 'PGD-AT'
  # out-of-order lines are sorted
  d2 = _write_run(tmp_path / 'r2', None, [{'epoch': 3}, {'epoch': 1}, {'epoch': 2.0}])
  assert [r['epoch'] for r in report.load_run(d2).history] == [1, 2, 3]


@pytest.mark.parametrize('cfg,label', [
    (_config('at'), 'PGD-AT'),
    (_config('at', sglr=True), 'PGD-AT + SGLR'),
    (_config('trades', sglr=True), 'TRADES + SGLR'),
    (_config('trades'), 'TRADES'),
    (_config('ls'), 'PGD-AT + LS'),
    (_config('te'), 'PGD-AT + TE'),
    (_config('at', sglr=True, name='my run'), 'my run'),
    ({'objective': {'name': 'weird'}}, 'WEIRD'),
    ({}, 'somedir'),
])
def test_labels(tmp_path, cfg, label):
  d = _write_run(tmp_path / 'somedir', cfg, [{'epoch': 1}])
  assert report.load_run(d).label == label


def test_duplicate_labels_are_disambiguated(tmp_path):
  a = report.load_run(_write_run(tmp_path / 'a', _config(noise=0.0), [{'epoch': 1}]))
  b = report.load_run(_write_run(tmp_path / 'b', _config(noise=0.4), [{'epoch': 1}]))
  c = report.load_run(_write_run(tmp_path / 'c', _config(noise=0.4), [{'epoch': 1}]))
  labels = report.display_labels([a, b, c])
  assert len(set(labels)) == 3
  assert labels[0] == 'PGD-AT (noise 0%)'
  assert labels[1].startswith('PGD-AT (noise 40%)') and labels[1].endswith('[b]')


def test_empty_workdir_raises(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='history.jsonl'):
    report.load_run(empty)
  with pytest.raises(ValueError, match='history.jsonl'):
    report.make_report([str(empty)], tmp_path / 'out')
  with pytest.raises(ValueError, match='does not exist'):
    report.load_run(tmp_path / 'nope')
  _write_run(tmp_path / 'blank', _config(), raw_history='\n\n')
  with pytest.raises(ValueError, match='no epoch'):
    report.load_run(tmp_path / 'blank')
  assert not (tmp_path / 'out' / 'report.md').exists()


# ----------------------------------------------------------------------------- tables


def test_results_table_numbers(three_runs):
  runs = [report.load_run(d) for d in three_runs]
  md = report.results_table(runs)
  header, rows = _table_rows(md)
  assert header == ('| Method | Natural best | final | diff | PGD-20 best | final | diff '
                    '| AutoAttack best | final | diff |')
  # Hand-computed: 80.71 -> 80.7, 82.43 -> 82.4, diff -1.72 -> -1.7; 50.73-41.38 = 9.35 -> 9.3
  # (9.349999 in binary), 47.68-40.21 = 7.47 -> 7.5
  assert rows['PGD-AT'] == ['80.7', '82.4', '-1.7', '50.7', '41.4', '9.3', '47.7', '40.2', '7.5']
  # 82.9-83.04 = -0.14 -> -0.1; 56.44-55.86 = 0.58 -> 0.6; no AutoAttack -> '-'
  assert rows['PGD-AT + SGLR'] == ['82.9', '83.0', '-0.1', '56.4', '55.9', '0.6', '-', '-', '-']
  # TRADES + SGLR has no results.json: best / final from the history (dagger row)
  hist = report.load_run(three_runs[2]).history
  best = max(hist, key=lambda r: r['test_pgd20_acc'])
  final = hist[-1]
  exp = [100 * best['test_natural_acc'], 100 * final['test_natural_acc'], None,
         100 * best['test_pgd20_acc'], 100 * final['test_pgd20_acc'], None]
  exp[2], exp[5] = exp[0] - exp[1], exp[3] - exp[4]
  got = rows['TRADES + SGLR †']
  assert got[:6] == [f'{v:.1f}' if f'{v:.1f}' != '-0.0' else '0.0' for v in exp]
  assert got[6:] == ['-', '-', '-']
  assert '† no results.json' in md

  js = report.results_table_json(runs)
  assert js['metrics'] == ['natural_acc', 'pgd20_acc', 'autoattack_acc']
  r0 = js['rows'][0]
  assert r0['method'] == 'PGD-AT' and r0['source'] == 'results' and r0['best_epoch'] == 16
  assert r0['pgd20_acc']['best'] == pytest.approx(50.73)
  assert r0['pgd20_acc']['diff'] == pytest.approx(9.35)
  assert r0['ece_adv'] == {'best': pytest.approx(8.0), 'final': pytest.approx(10.0)}
  r2 = js['rows'][2]
  assert r2['source'] == 'history' and r2['best_epoch'] == best['epoch']
  assert r2['final_epoch'] == 30 and r2['autoattack_acc']['best'] is None


def test_autoattack_column_only_when_present(three_runs):
  runs = [report.load_run(d) for d in three_runs[1:]]
  header, rows = _table_rows(report.results_table(runs))
  assert 'AutoAttack' not in header
  assert all(len(cells) == 6 for cells in rows.values())
  assert report.results_table_json(runs)['metrics'] == ['natural_acc', 'pgd20_acc']


def test_diff_computed_when_results_lack_it(tmp_path):
  d = _write_run(tmp_path / 'r', _config(), [{'epoch': 1}],
                 _results({'natural_acc': 0.5, 'pgd20_acc': 0.3},
                          {'natural_acc': 0.4, 'pgd20_acc': 0.301}, diff=False, ece=False))
  _, rows = _table_rows(report.results_table(report.load_run(d)))
  assert rows['PGD-AT'] == ['50.0', '40.0', '10.0', '30.0', '30.1', '-0.1']
  # A stored diff is used only where best or final is missing; else the row is consistent.
  res = _results({'natural_acc': 0.5, 'pgd20_acc': 0.3}, {'natural_acc': 0.4}, ece=False)
  res['diff'] = {'natural_acc': 0.2, 'pgd20_acc': 0.05}
  d = _write_run(tmp_path / 's', _config(), [{'epoch': 1}], res)
  _, rows = _table_rows(report.results_table(report.load_run(d)))
  assert rows['PGD-AT'] == ['50.0', '40.0', '10.0', '30.0', '-', '5.0']


# ----------------------------------------------------------------------------- events


def test_lr_decay_and_sglr_markers(tmp_path):
  run = report.load_run(_write_run(tmp_path / 'p', _config(sglr=True), _history()))
  # lr drops first appear at epochs 16 and 23: boundaries 15.5 and 22.5
  assert report.lr_decay_epochs(run) == [15.5, 22.5]
  # start_epoch 12 is the 0-based index: history epoch 13 is the first refined one
  assert report.sglr_start_epoch(run) == 12.5
  # No lr in the history: the config's decay epochs, up to the last epoch
  hist = [{'epoch': e} for e in range(1, 21)]
  run = report.load_run(_write_run(tmp_path / 'c', _config(), hist))
  assert report.lr_decay_epochs(run) == [15.0]
  assert report.sglr_start_epoch(run) is None  # SGLR disabled
  # Cosine: no discrete decay, whether named in the config or only seen in the lr
  hist = [{'epoch': e, 'lr': 0.05 * (1 + math.cos(math.pi * (e - 1) / 30))}
          for e in range(1, 31)]
  for cfg in (_config(schedule='cosine'), {}):
    run = report.load_run(_write_run(tmp_path / f'cos{len(cfg)}', cfg, hist))
    assert report.lr_decay_epochs(run) == []


def test_ece_from_bins():
  rel = {'bin_conf': [None, 0.5, 0.9], 'bin_acc': [None, 0.4, 0.6], 'bin_count': [0, 30, 10]}
  # (30 * 0.1 + 10 * 0.3) / 40 = 0.15
  assert report.ece_from_bins(rel) == pytest.approx(0.15)
  assert report.ece_from_bins({'bin_conf': [], 'bin_acc': []}) is None


# ----------------------------------------------------------------------------- figures


def test_make_report_writes_everything(three_runs, tmp_path):
  out = tmp_path / 'report'
  paths = report.make_report(three_runs, out)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted([report.ACCURACY_PNG, report.GRAD_NORM_PNG, report.NOISY_FIT_PNG,
                          'reliability_pgd-at.png', 'results_table.json', 'report.md'])
  for p in paths:
    assert os.path.isfile(p)
    if p.endswith('.png'):
      _assert_good_png(p)
  md = (out / 'report.md').read_text()
  assert report.results_table([report.load_run(d) for d in three_runs]).strip() in md
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
  d = _write_run(tmp_path / 'sparse', None, hist)
  run = report.load_run(d)
  assert report.plot_grad_norm([run], tmp_path / 'g.png') is None
  assert report.plot_noisy_fit([run], tmp_path / 'n.png') is None
  assert report.plot_reliability(run, tmp_path / 'r.png') is None
  assert not (tmp_path / 'g.png').exists()
  paths = report.make_report([d], tmp_path / 'out')
  assert sorted(os.path.basename(p) for p in paths) == [
      report.ACCURACY_PNG, 'report.md', 'results_table.json']
  _assert_good_png(paths[0])
  _, rows = _table_rows((tmp_path / 'out' / 'report.md').read_text().split('## Results')[1])
  # best PGD-20 = epoch 3 (only finite value), final = epoch 3 (last finite test value)
  assert rows['sparse †'] == ['60.0', '60.0', '0.0', '30.0', '30.0', '0.0']
  # a workdir with nothing plottable at all: no figure, still a report
  d2 = _write_run(tmp_path / 'bare', None, [{'epoch': 1, 'lr': 0.1}])
  paths = report.make_report([d2], tmp_path / 'out2')
  assert sorted(os.path.basename(p) for p in paths) == ['report.md', 'results_table.json']


def test_plot_functions_return_paths(three_runs, tmp_path):
  runs = [report.load_run(d) for d in three_runs]
  p = report.plot_grad_norm(runs[:1], tmp_path / 'sub' / 'g.png')
  assert p == str(tmp_path / 'sub' / 'g.png')
  _assert_good_png(p)
  # results.json with reliability only for the final checkpoint's clean inputs
  res = runs[0].results
  res['best'].pop('reliability')
  res['final']['reliability'].pop('adv')
  p = report.plot_reliability(runs[0], tmp_path / 'rel.png')
  w, h = _png_size(p)
  assert w < h * 1.6  # a single panel, not a 2x2 grid
