"""The seeded studies' statistics over seeds, from hand-written run outputs: means,
standard deviations, the paired differences and their t-test, against values worked out
by hand."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

# (method, seed) -> (best PGD-20, final PGD-20, final natural, final fit of flipped labels)
RUNS = {('PGD-AT', 0): (0.90, 0.70, 0.85, 0.50), ('SGLR', 0): (0.91, 0.90, 0.95, 0.04),
        ('PGD-AT', 1): (0.88, 0.72, 0.87, 0.40), ('SGLR', 1): (0.90, 0.89, 0.94, 0.02),
        ('PGD-AT', 2): (0.89, 0.68, 0.86, 0.60), ('SGLR', 2): (0.89, 0.88, 0.93, 0.06)}


# eps study: (method, eps, seed) -> (best, final PGD-20)
EPS_RUNS = {('PGD-AT', 0.3, 0): (0.80, 0.60), ('PGD-AT', 0.3, 1): (0.78, 0.64),
            ('SGLR', 0.3, 0): (0.79, 0.70), ('SGLR', 0.3, 1): (0.80, 0.71),
            ('PGD-AT', 0.1, 0): (0.92, 0.91), ('SGLR', 0.1, 0): (0.92, 0.92)}
# sweep: (setting, seed) -> (best, final PGD-20, final ECE on clean inputs)
SWEEP_RUNS = {('alpha 0 T 1', 0): (0.90, 0.88, 0.10), ('alpha 0 T 1', 1): (0.91, 0.86, 0.14),
              ('alpha 0.2 T 1', 0): (0.91, 0.90, 0.05), ('alpha 0.2 T 1', 1): (0.92, 0.90, 0.07)}


def _write(root, study: str, runs: dict):
  """Writes ``runs`` ({name: (seed, best, final, natural final, fit or None, final extras)})
  as the outputs of ``study`` under ``root``."""
  summary = {}
  for name, (seed, best, final, nat, fit, extra) in runs.items():
    wd = root / study / 'runs' / name
    wd.mkdir(parents=True)
    (wd / 'results.json').write_text(json.dumps(
        {'best': {'epoch': 9, 'natural_acc': 0.9, 'pgd20_acc': best},
         'final': dict({'epoch': 20, 'natural_acc': nat, 'pgd20_acc': final}, **extra)}))
    (wd / 'history.jsonl').write_text(json.dumps(
        {'epoch': 20, 'epoch_time_s': 2.0, 'train_noisy_fit': fit}) + '\n')
    summary[name] = {'seed': seed, 'wall_s': 10.0}
  (root / study / 'summary.json').write_text(json.dumps(
      {'title': study, 'command': f'studies/{study}.py', 'machine': 'm', 'wall_s': 60.0,
       'runs': summary}))


@pytest.fixture(scope='module')
def docs(tmp_path_factory):
  """RESULTS.md and its figures, written by write_results.py from the three studies."""
  tmp = tmp_path_factory.mktemp('seeded')
  root = tmp / 'studies_out'
  _write(root, 'noise_rates', {
      f'{method} noise 0.4 seed {seed}': (seed, best, final, nat, fit, {})
      for (method, seed), (best, final, nat, fit) in RUNS.items()})
  _write(root, 'epsilon', {f'{m} eps {e:g} seed {s}': (s, b, f, 0.9, None, {})
                           for (m, e, s), (b, f) in EPS_RUNS.items()})
  _write(root, 'alpha_temperature', {
      f'{m} seed {s}': (s, b, f, 0.95, None, {'ece_clean': e, 'ece_adv': 2 * e})
      for (m, s), (b, f, e) in SWEEP_RUNS.items()})
  p = subprocess.run([sys.executable, os.path.join('studies', 'write_results.py'),
                      f'--studies_out={root}', f"--docs={tmp / 'docs'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  return tmp / 'docs'


def _section(docs, title: str) -> str:
  return (docs / 'RESULTS.md').read_text().split(f'## {title}')[1].split('\n## ')[0]


def test_mean_and_sd_over_seeds_and_the_paired_comparison(docs):
  text = _section(docs, 'Noise_rates')
  rows = {l.split(' | ')[1]: l for l in text.splitlines() if l.startswith('| 0.4 | ')}
  # PGD-AT final 70, 72, 68: mean 70.0, sd 2.0; best 90, 88, 89: 89.0 ± 1.0; diff 20, 16,
  # 21: 19.0 ± 2.6458; natural 85, 87, 86: 86.0 ± 1.0; fit 50, 40, 60: 50.0 ± 10.0
  assert rows['PGD-AT'] == ('| 0.4 | PGD-AT | 0,1,2 | 89.0 ± 1.0 | 70.0 ± 2.0 | 19.0 ± 2.6 | '
                            '86.0 ± 1.0 | 50.0 ± 10.0 |')
  # SGLR final 90, 89, 88: 89.0 ± 1.0; best 91, 90, 89: 90.0 ± 1.0; diff 1, 1, 1: 1.0 ± 0.0
  assert rows['SGLR'] == ('| 0.4 | SGLR | 0,1,2 | 90.0 ± 1.0 | 89.0 ± 1.0 | 1.0 ± 0.0 | '
                          '94.0 ± 1.0 | 4.0 ± 2.0 |')
  # paired final differences 20, 17, 20: mean 19.0, sd sqrt(3) = 1.732; t = 19 / (1.732 /
  # sqrt 3) = 19, df 2: two-sided p = 0.00276; diff differences -19, -15, -20: -18.0 ±
  # 2.6458, t = -11.78, p = 0.00713
  paired = [l for l in text.splitlines() if l.startswith('| 0.4 | 0,1,2 |')]
  assert paired == ['| 0.4 | 0,1,2 | +20.0, +17.0, +20.0 | +19.0 ± 1.7 | 3 of 3 | 0.003 | '
                    '-18.0 ± 2.6 (p 0.007) |']
  assert '![pgd20_vs_noise_rate.png](figures/noise_rates/pgd20_vs_noise_rate.png)' in text
  assert os.path.getsize(docs / 'figures' / 'noise_rates' /
                         'pgd20_vs_noise_rate.png') > 5000
  assert '| SGLR noise 0.4 seed 2 |' in text  # the per-run table, folded


def test_the_radius_study_has_no_fit_column_and_compares_per_eps(docs):
  # eps 0.3: PGD-AT final 60, 64; SGLR 70, 71 -> paired +10, +7: mean 8.5, sd 2.1213,
  # t = 8.5 / (2.1213 / sqrt 2) = 5.667, df 1: two-sided p = 0.1112
  text = _section(docs, 'Epsilon')
  assert '| eps | method | seeds | PGD-20 best | PGD-20 final | PGD-20 diff | natural final |' in text
  assert 'fit of flipped labels' not in text  # clean labels
  assert '| 0.3 | PGD-AT | 0,1 | 79.0 ± 1.4 | 62.0 ± 2.8 | 17.0 ± 4.2 | 90.0 ± 0.0 |' in text
  assert '| 0.3 | 0,1 | +10.0, +7.0 | +8.5 ± 2.1 | 2 of 2 | 0.111 |' in text
  assert '| 0.1 | 0 | +1.0 | +1.0 | 1 of 1 | - | -1.0 (p -) |' in text  # one seed: no sd, no p
  assert os.path.getsize(docs / 'figures' / 'epsilon' / 'pgd20_vs_eps.png') > 5000


def test_the_sweep_compares_each_setting_with_plain_pgd_at(docs):
  # alpha 0.2 T 1 minus alpha 0 T 1, final: +2, +4 -> +3.0 ± 1.4142, t = 3 / 1 = 3,
  # df 1: p = 0.2048; ECE clean final 10 and 14 -> 12.0 ± 2.8
  text = _section(docs, 'Alpha_temperature')
  assert ('| alpha 0 T 1 | 0,1 | 90.5 ± 0.7 | 87.0 ± 1.4 | 3.5 ± 2.1 | 95.0 ± 0.0 | '
          '12.0 ± 2.8 | 24.0 ± 5.7 |') in text
  assert '| alpha 0.2 T 1 | 0,1 | +2.0, +4.0 | +3.0 ± 1.4 | 2 of 2 | 0.205 |' in text
  assert '| alpha 0 T 1 | 0,1 | +0.0' not in text  # the base is not compared with itself
  assert os.path.getsize(docs / 'figures' / 'alpha_temperature' /
                         'pgd20_and_ece_by_setting.png') > 5000
