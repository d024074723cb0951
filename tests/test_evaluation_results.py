"""sglr_jax.evaluation.results: the one Best / Final / Diff table, from hand-written numbers."""
from __future__ import annotations

import json

import pytest

from sglr_jax.evaluation import results

BEST = {'epoch': 21, 'natural_acc': 0.8125, 'pgd20_acc': 0.5, 'autoattack_acc': 0.4375,
        'ece_clean': 0.0625, 'ece_adv': 0.125, 'num_examples': 16,
        'autoattack_after': {'apgd-ce': 0.5}}
FINAL = {'epoch': 40, 'natural_acc': 0.875, 'pgd20_acc': 0.4375, 'autoattack_acc': 0.375,
         'ece_clean': 0.09375, 'ece_adv': 0.25, 'num_examples': 16}


def _results(budget='standard'):
  return {'best': BEST, 'final': FINAL, 'diff': results.diff(BEST, FINAL),
          'eval_config': {'autoattack_budget': budget}}


def test_diff_is_best_minus_final_of_the_float_metrics():
  d = results.diff(BEST, FINAL)
  # exact in binary: multiples of 1/32
  assert d == {'natural_acc': -0.0625, 'pgd20_acc': 0.0625, 'autoattack_acc': 0.0625,
               'ece_clean': -0.03125, 'ece_adv': -0.125}
  assert 'epoch' not in d and 'num_examples' not in d  # ints are not metrics
  assert results.diff({'natural_acc': 0.5}, {}) == {}


def test_markdown_table_by_hand():
  md = results.markdown_table(_results(), title='run')
  assert md == ('### run\n\n'
                '| Metric | Best (epoch 21) | Final (epoch 40) | Diff |\n'
                '|---|---|---|---|\n'
                '| Natural | 81.25 | 87.50 | -6.25 |\n'
                '| PGD-20 | 50.00 | 43.75 | +6.25 |\n'
                '| AutoAttack | 43.75 | 37.50 | +6.25 |\n'
                '| ECE clean | 6.25 | 9.38 | -3.12 |\n'
                '| ECE PGD-20 | 12.50 | 25.00 | -12.50 |\n')
  smoke = results.markdown_table(_results('smoke'))
  assert smoke.startswith('| Metric |')  # no title
  assert '| AutoAttack (smoke budget) | 43.75 |' in smoke


def test_write_puts_json_and_markdown_in_the_workdir(tmp_path):
  wd = tmp_path / 'my_run'
  wd.mkdir()
  res = _results()
  results.write(str(wd) + '/', res)
  assert json.loads((wd / 'results.json').read_text()) == res
  # issue 19: the table, then AutoAttack's per-attack breakdown
  assert (wd / 'results.md').read_text() == (results.markdown_table(res, title='my_run')
                                             + results.autoattack_breakdown(res))


def test_autoattack_breakdown_by_hand():
  res = _results()
  res['final'] = dict(FINAL, autoattack_after={'apgd-ce': 0.4375, 'square': 0.375},
                      autoattack_flags=[{'check': 'nan', 'message': '1 NaN'}])
  assert results.autoattack_breakdown(res) == (
      '\n#### AutoAttack: robust accuracy after each attack\n\n'
      '| Attack | Best | Final |\n|---|---|---|\n'
      '| apgd-ce | 50.0 | 43.8 |\n'
      '| square | - | 37.5 |\n\n'
      '- flag (final): nan: 1 NaN\n')
  assert results.autoattack_breakdown(_results() | {'best': FINAL}) == ''


def test_results_json_is_strict(tmp_path):
  res = _results()
  res['best'] = dict(BEST, natural_acc=float('nan'))
  results.write(str(tmp_path), res)
  text = (tmp_path / 'results.json').read_text()
  assert 'NaN' not in text
  assert json.loads(text)['best']['natural_acc'] is None


def test_best_final_diff_is_tolerant_and_self_consistent():
  got = results.best_final_diff({'a': 0.5, 'b': None, 'c': 'x'}, {'a': 0.25, 'b': 0.1},
                                ('a', 'b', 'c'), stored_diff={'a': 9.0, 'b': 0.2})
  assert got['a'] == {'best': 0.5, 'final': 0.25, 'diff': 0.25}  # not the stored 9.0
  assert got['b'] == {'best': None, 'final': 0.1, 'diff': 0.2}  # only side missing: stored
  assert got['c'] == {'best': None, 'final': None, 'diff': None}
  assert [results.number(v) for v in (True, float('nan'), '0.5', None)] == [None, None, 0.5, None]


def test_runs_table_by_hand():
  rows = [{'method': 'A|B', 'natural_acc': {'best': 81.25, 'final': 87.5, 'diff': -0.04},
           'seed': '0'},
          {'method': 'C', 'natural_acc': {'best': None, 'final': 50.0}, 'seed': '1'}]
  md = results.runs_table(rows, ['natural_acc'], columns=['seed'])
  assert md.splitlines() == ['| Method | Natural best | final | diff | seed |',
                             '|:---|---:|---:|---:|---:|',
                             '| A\\|B | 81.2 | 87.5 | 0.0 | 0 |',  # -0.04 -> '0.0', not '-0.0'
                             '| C | - | 50.0 | - | 1 |']
  md = results.runs_table(rows[1:], ['natural_acc'], parts=('best', 'final'))
  assert md.splitlines()[0] == '| Method | Natural best | final |'


@pytest.mark.parametrize('v,s', [(None, '-'), (12.345, '12.3'), (-0.04, '0.0'), (-0.06, '-0.1')])
def test_fmt(v, s):
  assert results.fmt(v) == s
