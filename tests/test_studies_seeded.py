"""The noise-rate study's statistics over seeds, from hand-written run outputs: means,
standard deviations, the paired differences and their t-test, against values worked out
by hand."""
import json
import os
import subprocess
import sys

from conftest import ROOT

# (method, seed) -> (best PGD-20, final PGD-20, final natural, final fit of flipped labels)
RUNS = {('PGD-AT', 0): (0.90, 0.70, 0.85, 0.50), ('SGLR', 0): (0.91, 0.90, 0.95, 0.04),
        ('PGD-AT', 1): (0.88, 0.72, 0.87, 0.40), ('SGLR', 1): (0.90, 0.89, 0.94, 0.02),
        ('PGD-AT', 2): (0.89, 0.68, 0.86, 0.60), ('SGLR', 2): (0.89, 0.88, 0.93, 0.06)}


def _study(tmp_path):
  study = tmp_path / 'studies_out' / 'noise_rates'
  runs = {}
  for (method, seed), (best, final, nat, fit) in RUNS.items():
    name = f'{method} noise 0.4 seed {seed}'
    wd = study / 'runs' / name
    wd.mkdir(parents=True)
    (wd / 'results.json').write_text(json.dumps(
        {'best': {'epoch': 9, 'natural_acc': 0.9, 'pgd20_acc': best},
         'final': {'epoch': 20, 'natural_acc': nat, 'pgd20_acc': final}}))
    (wd / 'history.jsonl').write_text(json.dumps(
        {'epoch': 20, 'epoch_time_s': 2.0, 'train_noisy_fit': fit}) + '\n')
    runs[name] = {'seed': seed, 'wall_s': 10.0}
  (study / 'summary.json').write_text(json.dumps(
      {'title': 'label noise rates', 'command': 'studies/noise_rates.py', 'machine': 'm',
       'wall_s': 60.0, 'runs': runs}))
  p = subprocess.run([sys.executable, os.path.join('studies', 'write_results.py'),
                      f"--studies_out={tmp_path / 'studies_out'}", f"--docs={tmp_path / 'docs'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  return (tmp_path / 'docs' / 'RESULTS.md').read_text()


def test_mean_and_sd_over_seeds_and_the_paired_comparison(tmp_path):
  text = _study(tmp_path)
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
  assert os.path.getsize(tmp_path / 'docs' / 'figures' / 'noise_rates' /
                         'pgd20_vs_noise_rate.png') > 5000
  assert '| SGLR noise 0.4 seed 2 |' in text  # the per-run table, folded
