"""A ``gs://`` workdir end to end (train, halt, resume, evaluate, report) against a local
GCS emulator: epath / gcsfs for the files, TensorStore for Orbax's arrays, Orbax's
commit-file protocol ('auto' on ``gs://``). The work runs in ``_gcs_worker.py``, a
subprocess, because the emulator's address must be set before gcsfs and TensorStore load.
"""
import json
import os
import subprocess
import sys

import pytest

import _mp_worker as w
from conftest import ROOT

pytest.importorskip('gcsfs')
pytest.importorskip('gcp_storage_emulator')


def test_a_gs_workdir_trains_resumes_evaluates_and_reports(tmp_path):
  out = tmp_path / 'out.json'
  p = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', '_gcs_worker.py'), str(out)],
                     cwd=str(tmp_path), env=w.subprocess_env(1), capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  got = json.loads(out.read_text())
  assert got['conditional_rewrite'] is True  # the emulator gives generations as GCS does
  assert got['epochs_after_halt'] == [1] and got['latest_after_halt'] == [4]  # 4 steps/epoch
  assert got['epochs'] == [1, 2]  # resumed from latest/4, not retrained
  assert got['available'] == {'latest': [4, 8], 'best': [got['results_epochs'][0]],
                              'final': [2]}
  assert got['final_committed'] is True
  # commit-file protocol: step directories written in place, no temporary names left
  assert not any('tmp' in n for n in got['checkpoint_names'])
  assert got['results_epochs'][1] == 2
  assert got['stored_final_natural'] == got['final_natural']
  assert got['config_width'] == 8
  assert got['tensorboard'] == ['epoch1', 'epoch2']
  assert {'report.md', 'results_table.json', 'accuracy_curves.png'} <= set(got['report'])
  assert got['local_gs_dir'] is False
