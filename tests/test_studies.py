"""Each study script runs end to end in its miniature setting, so none can rot."""
import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'studies', '*.py'))
                 if not p.endswith(('common.py', 'write_results.py')))


def test_there_are_four_studies():
  assert len(SCRIPTS) == 4


@pytest.mark.parametrize('script', SCRIPTS)
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
  p = subprocess.run([sys.executable, os.path.join('studies', 'write_results.py'),
                      f'--studies_out={tmp_path / "studies_out"}', f'--docs={tmp_path / "docs"}'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  text = (tmp_path / 'docs' / 'RESULTS.md').read_text()
  import json  # pylint: disable=g-import-not-at-top
  for name in json.loads((out / 'summary.json').read_text())['runs']:
    assert f'| {name} |' in text
  assert '](figures/' in text
