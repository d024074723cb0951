"""Each study script runs end to end in its miniature setting, so none can rot; the
results page is assembled from the studies' outputs by the one results table."""
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

# The study scripts (not the helpers, nor the per-checkpoint analyses: tests/test_analysis.py).
# Every one lists its runs with valid configs (--list); one runs end to end in miniature,
# with a figure group and the statistics over seeds. The others differ from it only in
# their run lists, and they all share studies/common.py.
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'studies', '*.py'))
                 if not p.endswith(('common.py', 'write_results.py', 'analyses.py', 'aggregate.py')))
MINIATURE = ('noise_rates.py',)


def test_the_studies():
  assert SCRIPTS == ['alpha_temperature.py', 'batchnorm_noise.py', 'curvature.py',
                     'epsilon.py', 'label_noise.py', 'noise_rates.py', 'robust_overfitting.py', 'trades.py']


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_run_of_a_study_has_a_valid_config(script, monkeypatch, capsys):
  import runpy
  monkeypatch.syspath_prepend(os.path.join(ROOT, 'studies'))
  monkeypatch.setattr(sys, 'argv', [script, '--list'])
  runpy.run_path(os.path.join(ROOT, 'studies', script), run_name='__main__')
  names = [l.split('\t')[0] for l in capsys.readouterr().out.splitlines() if '\t' in l]
  assert names and len(set(names)) == len(names)  # each run has its own workdir


def test_curvature_study_configs(monkeypatch):
  """The curvature study's three runs: valid configs, the analysis every epoch, the
  20-epoch schedule, piecewise and cosine."""
  import runpy
  from sglr_jax import config_validation
  monkeypatch.syspath_prepend(os.path.join(ROOT, 'studies'))
  study = runpy.run_path(os.path.join(ROOT, 'studies', 'curvature.py'))
  common = study['run_study'].__globals__
  runs = {name: common['make_config'](module, overrides, False)
          for name, module, overrides in study['RUNS']}
  assert list(runs) == ['PGD-AT piecewise', 'SGLR piecewise', 'PGD-AT cosine']
  for name, c in runs.items():
    config_validation.validate(c)
    assert c.train.analysis_every_epochs == 1 and c.train.epochs == 20
    assert tuple(c.schedule.decay_epochs) == (10, 15) and c.data.noise.rate == 0.4
    assert c.model.batch_norm is False and c.seed == 0
    assert c.sglr.enabled == name.startswith('SGLR')
    assert c.schedule.name == ('cosine' if 'cosine' in name else 'piecewise')


def test_studies_use_the_installed_package():
  for p in glob.glob(os.path.join(ROOT, 'studies', '*.py')):
    with open(p) as f:
      assert 'sys.path' not in f.read(), p


def _write_results(studies_out, docs):
  p = subprocess.run([sys.executable, os.path.join('studies', 'write_results.py'),
                      f'--studies_out={studies_out}', f'--docs={docs}'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  return (docs / 'RESULTS.md').read_text()


def test_results_page_from_hand_written_outputs(tmp_path):
  study = tmp_path / 'studies_out' / 'trades'
  wd = study / 'runs' / 'TRADES'
  wd.mkdir(parents=True)
  (study / 'summary.json').write_text(json.dumps(
      {'title': 'TRADES', 'command': 'studies/trades.py', 'machine': 'm', 'wall_s': 90.0,
       'runs': {'TRADES': {'seed': 3}}}))
  (wd / 'results.json').write_text(json.dumps(
      {'best': {'epoch': 7, 'natural_acc': 0.9875, 'pgd20_acc': 0.925},
       'final': {'epoch': 20, 'natural_acc': 0.99, 'pgd20_acc': 0.9125}}))
  (wd / 'history.jsonl').write_text(''.join(
      json.dumps({'epoch': e, 'epoch_time_s': 1.25, 'train_noisy_fit': 0.5}) + '\n'
      for e in (1, 2)))
  text = _write_results(tmp_path / 'studies_out', tmp_path / 'docs')
  # percent, one decimal: natural 98.75 -> 98.8, 99.0, diff -0.2499... -> -0.2; PGD-20 92.5,
  # 91.25 -> 91.2, diff 1.2500...1 -> 1.3; best epoch 7, seed 3, fit 50.0, wall 2 x 1.25 s
  row = [l for l in text.splitlines() if l.startswith('| TRADES |')]
  assert row == ['| TRADES | 98.8 | 99.0 | -0.2 | 92.5 | 91.2 | 1.3 | 7 | 3 | 50.0 | 2.5 |']
  assert '1.5 min for 1 runs' in text
  assert '`studies/robust_overfitting.py`' in text  # the studies not run yet are named


def test_results_page_keeps_sections_of_studies_without_outputs_here(tmp_path):
  docs = tmp_path / 'docs'
  docs.mkdir()
  (docs / 'RESULTS.md').write_text(
      '# Results\n\n## Label noise\n\nCommand: `python studies/label_noise.py --rates 0.4`; '
      'machine: m\n\n| run | x |\n|---|---|\n| A | 1 |\n\n## Not run yet\n\nstale\n')
  (tmp_path / 'studies_out').mkdir()
  text = _write_results(tmp_path / 'studies_out', docs)
  assert '## Label noise\n\nCommand: `python studies/label_noise.py --rates 0.4`' in text
  assert '| A | 1 |' in text and 'stale' not in text
  assert '`studies/label_noise.py`' not in text.split('## Not run yet')[1]


@pytest.mark.parametrize('script', MINIATURE)
def test_study_runs_in_miniature(script, tmp_path):
  out = tmp_path / 'studies_out' / script[:-3]
  p = subprocess.run([sys.executable, os.path.join('studies', script), '--mini', '--no-progress',
                      f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert (out / 'summary.json').exists()
  pngs = glob.glob(str(out / '**' / '*.png'), recursive=True)
  mds = glob.glob(str(out / '**' / 'report.md'), recursive=True)
  assert pngs and mds
  assert all(os.path.getsize(p) > 5000 for p in pngs)
  # docs/RESULTS.md is assembled from these outputs by a script, not typed
  text = _write_results(tmp_path / 'studies_out', tmp_path / 'docs')
  for name in json.loads((out / 'summary.json').read_text())['runs']:
    assert f'| {name} |' in text
  assert '](figures/' in text


def test_kept_sections_tell_a_flagged_study_from_its_script(tmp_path, monkeypatch):
  """A section measured earlier is kept under the study that wrote it: the command line
  ``studies/curvature.py --long`` is the 40-epoch study, not the 20-epoch one."""
  monkeypatch.syspath_prepend(os.path.join(ROOT, 'studies'))
  import write_results  # pylint: disable=g-import-not-at-top
  page = tmp_path / 'RESULTS.md'
  page.write_text('# R\n\n## A\n\nCommand: `python studies/curvature.py --no-progress`; x\n\n'
                  '## B\n\nCommand: `python studies/curvature.py --long`; y\n\n'
                  '## C\n\nCommand: `python studies/nonexistent.py`\n')
  kept = write_results._kept_sections(str(page))
  assert sorted(kept) == ['curvature', 'curvature_40ep']
  assert kept['curvature'][0] == '## A' and kept['curvature_40ep'][-1].endswith('; y')
