"""The paper's command on a fresh machine: the first CIFAR-10 run downloads, prepares and
trains; the second downloads nothing; without network it ends in one line, status 2.

The internet is a local HTTP server on 127.0.0.1 serving a tiny archive in the exact
CIFAR-10 binary layout (``test_cifar_prepare.make_archive``); ``run.py`` runs in a
subprocess with only the archive's URL and checksum overridden, through the environment
variables documented for mirrors (``SGLR_JAX_CIFAR10_URL`` / ``_SHA256``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sglr_jax import history
from tests.test_cifar_prepare import _Server
from tests.test_cifar_prepare import _closed_port_url
from tests.test_cifar_prepare import _version
from tests.test_cifar_prepare import make_archive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The paper's config, one epoch, made tiny: 15 training images in the archive (one step of
# 8), ResNet-18 at width 4, PGD-1 for training and evaluation, SGLR refining from epoch 0.
SMALL = ('--config.train.epochs=1', '--config.train.batch_size=8', '--config.model.width=4',
         '--config.sglr.start_epoch=0', '--config.schedule.decay_epochs=(1,)',
         '--config.attack.steps=1', '--config.eval.steps=1', '--config.eval.batch_size=4',
         '--config.train.train_fit_every_epochs=0')


def _run(workdir, data_dir, url, sha):
  env = dict(os.environ, SGLR_JAX_CIFAR10_URL=url, SGLR_JAX_CIFAR10_SHA256=sha)
  cmd = [sys.executable, 'run.py', '--config=configs/cifar10_sglr.py', f'--workdir={workdir}',
         f'--config.data.data_dir={data_dir}', *SMALL]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                        check=False)


@pytest.fixture
def server():
  s = _Server()
  yield s
  s.close()


def test_first_run_downloads_prepares_and_trains_then_reuses(server, tmp_path):
  url, sha = server.add('cifar10', make_archive('cifar10')[0])
  wd, data_dir = str(tmp_path / 'run'), str(tmp_path / 'data')
  first = _run(wd, data_dir, url, sha)
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stdout.strip().splitlines()[-1].startswith('done: epoch 1'), first.stdout
  assert f'Prepared cifar10 in {os.path.join(data_dir, "cifar10", _version("cifar10"))}' in (
      first.stderr)
  assert len(server.archive_gets()) == 1
  (record,) = history.read_history(wd)
  assert record['epoch'] == 1 and 0 <= record['test_pgd20_acc'] <= 1
  assert record['train_adv_acc'] in (k / 8 for k in range(9))  # one step of 8 images
  config = json.load(open(os.path.join(wd, 'config.json'), encoding='utf-8'))
  assert config['data']['name'] == 'cifar10' and config['model']['name'] == 'resnet18'
  assert os.listdir(os.path.join(wd, 'tensorboard', 'epoch'))
  assert sorted(os.listdir(data_dir)) == ['.cifar10.prepare.lock', 'cifar10']
  # The same command again: the run is complete, the data prepared; nothing is fetched.
  second = _run(wd, data_dir, url, sha)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Downloading' not in second.stderr and 'Prepared' not in second.stderr
  assert len(server.archive_gets()) == 1
  assert [r['epoch'] for r in history.read_history(wd)] == [1]


def test_without_network_one_line_and_status_2(tmp_path):
  url = _closed_port_url('cifar10')
  wd, data_dir = str(tmp_path / 'run'), str(tmp_path / 'data')
  p = _run(wd, data_dir, url, '2' * 64)
  assert p.returncode == 2, p.stderr[-3000:]
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1, lines
  (line,) = lines
  assert line.startswith(f'error: Could not download cifar10 from {url}'), line
  assert 'python -m sglr_jax.data.prepare cifar10 --data_dir=DIR' in line
  assert f'copy DIR/cifar10 to {os.path.join(data_dir, "cifar10")}' in line
  assert not os.path.exists(os.path.join(data_dir, 'cifar10'))
  assert not os.path.exists(os.path.join(wd, 'history.jsonl'))
