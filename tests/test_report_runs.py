"""sglr_jax.report.runs: reading workdirs tolerantly, and the run labels."""
from __future__ import annotations

import json

import pytest

import report_support as rs
from sglr_jax import report
from sglr_jax.report.runs import display_labels, load_run


def test_resume_duplicates_keep_last_and_sort(tmp_path):
  lines = [{'epoch': 1, 'lr': 0.1, 'test_pgd20_acc': 0.1},
           {'epoch': 2, 'lr': 0.1, 'test_pgd20_acc': 0.2},
           {'epoch': 3, 'lr': 0.1, 'test_pgd20_acc': 0.3},
           # resumed from the end of epoch 1: epochs 2 and 3 are written again
           {'epoch': 2, 'lr': 0.1, 'test_pgd20_acc': 0.25},
           {'epoch': 3, 'lr': 0.1, 'test_pgd20_acc': 0.35},
           {'epoch': 4, 'lr': 0.01, 'test_pgd20_acc': 0.4}]
  raw = '\n'.join(json.dumps(r) for r in lines) + '\n\n{"epoch": 5, "lr": 0.0'  # torn write
  d = rs.write_run(tmp_path / 'r', rs.config(), raw_history=raw)
  with pytest.warns(UserWarning, match='unparsable'):
    run = load_run(d)
  assert [r['epoch'] for r in run.history] == [1, 2, 3, 4]
  assert [r['test_pgd20_acc'] for r in run.history] == [0.1, 0.25, 0.35, 0.4]
  assert run.results is None and run.label == 'PGD-AT'
  # out-of-order lines are sorted
  d2 = rs.write_run(tmp_path / 'r2', None, [{'epoch': 3}, {'epoch': 1}, {'epoch': 2.0}])
  assert [r['epoch'] for r in load_run(d2).history] == [1, 2, 3]


@pytest.mark.parametrize('cfg,label', [
    (rs.config('at'), 'PGD-AT'),
    (rs.config('at', sglr=True), 'PGD-AT + SGLR'),
    (rs.config('trades', sglr=True), 'TRADES + SGLR'),
    (rs.config('trades'), 'TRADES'),
    (rs.config('ls'), 'PGD-AT + LS'),
    (rs.config('te'), 'PGD-AT + TE'),
    (rs.config('at', sglr=True, name='my run'), 'my run'),
    ({'objective': {'name': 'weird'}}, 'WEIRD'),
    ({}, 'somedir'),
])
def test_labels(tmp_path, cfg, label):
  d = rs.write_run(tmp_path / 'somedir', cfg, [{'epoch': 1}])
  assert load_run(d).label == label


def test_duplicate_labels_are_disambiguated(tmp_path):
  a = load_run(rs.write_run(tmp_path / 'a', rs.config(noise=0.0), [{'epoch': 1}]))
  b = load_run(rs.write_run(tmp_path / 'b', rs.config(noise=0.4), [{'epoch': 1}]))
  c = load_run(rs.write_run(tmp_path / 'c', rs.config(noise=0.4), [{'epoch': 1}]))
  labels = display_labels([a, b, c])
  assert len(set(labels)) == 3
  assert labels[0] == 'PGD-AT (noise 0%)'
  assert labels[1].startswith('PGD-AT (noise 40%)') and labels[1].endswith('[b]')


def test_empty_workdir_raises(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='history.jsonl'):
    load_run(empty)
  with pytest.raises(ValueError, match='history.jsonl'):
    report.make_report([str(empty)], tmp_path / 'out')
  with pytest.raises(ValueError, match='does not exist'):
    load_run(tmp_path / 'nope')
  rs.write_run(tmp_path / 'blank', rs.config(), raw_history='\n\n')
  with pytest.raises(ValueError, match='no epoch'):
    load_run(tmp_path / 'blank')
  assert not (tmp_path / 'out' / 'report.md').exists()
