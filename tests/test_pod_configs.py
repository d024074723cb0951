"""The CIFAR configs on an 8-device node (an 8-GPU host, a v5e-8): the configs' eval
batch of 500 is rounded up to 504, a train batch that does not divide is one error, and
a tiny-model run trains, evaluates and resumes on 8 simulated CPU devices.

The 8-device run is a fresh process (``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
on a tiny CIFAR-10 written by tfds (``fixtures.tfds_prepared``).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import _mp_worker as w
from fixtures.tfds_prepared import write_prepared

POD_RUN = r'''
import json, sys
import jax  # the tests' XLA flags and compilation cache come in the environment
from sglr_jax import errors, experiment
from sglr_jax.configs import cifar10_sglr
from sglr_jax.training import loop

data_dir, wd = sys.argv[1], sys.argv[2]

def config(**over):
  c = cifar10_sglr.get_config()
  c.model.name, c.model.width, c.model.depth = 'resnet', 4, (1, 1, 1, 1)
  c.data.data_dir, c.data.train_size, c.data.test_size = data_dir, 64, 20
  c.train.batch_size, c.train.epochs, c.train.halt_after_epoch = 32, 2, 1
  c.schedule.decay_epochs = (1,)
  c.attack.steps, c.eval.steps = 1, 1
  c.train.train_fit_every_epochs = 0
  c.sglr.start_epoch = 0
  c.update_from_flattened_dict(over)
  return c

out = {'devices': jax.device_count()}
c = config()
out['config_eval_batch'] = int(c.eval.batch_size)
out['eval_batch'] = experiment.build(c).eval.batch_size
try:
  experiment.build(config(**{'train.batch_size': 36}))
except errors.ConfigError as e:
  out['train_error'] = str(e)
first = loop.train_and_evaluate(c, wd, progress=False)  # halts after epoch 1
second = loop.train_and_evaluate(config(**{'train.halt_after_epoch': 0}), wd, progress=False)
out['epochs'] = [[r['epoch'] for r in first], [r['epoch'] for r in second]]
out['acc'] = [r['test_natural_acc'] for r in second] + [r['test_pgd20_acc'] for r in second]
print(json.dumps(out))
'''


def test_cifar_config_on_eight_devices(tmp_path):
  d = str(tmp_path / 'tfds')
  rng = np.random.default_rng(0)
  split = lambda n: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                     rng.integers(0, 10, n))
  write_prepared('cifar10', d, {'train': split(64), 'test': split(20)})
  out = subprocess.run([sys.executable, '-c', POD_RUN, d, str(tmp_path / 'wd')], cwd=w.ROOT,
                       env=w.subprocess_env(8), capture_output=True, text=True, timeout=900,
                       check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  r = json.loads(out.stdout.splitlines()[-1])
  assert r['devices'] == 8
  assert (r['config_eval_batch'], r['eval_batch']) == (500, 504)
  assert r['train_error'].startswith('train.batch_size=36 must be divisible')
  assert r['train_error'].endswith('nearest valid values: 32 or 40')
  assert r['epochs'] == [[1], [1, 2]]  # resumed after the halt, history kept
  # 20 test points in one padded batch of 504: every accuracy is a multiple of 1/20
  assert all(abs(a * 20 - round(a * 20)) < 1e-9 for a in r['acc'])
