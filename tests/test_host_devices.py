"""Splitting a CPU host into several XLA devices (run.py --cpu_devices)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config
from sglr_jax import host_devices


@pytest.mark.parametrize('batches,cores,expected', [
    ((128, 500), 2, 2),    # the main job on this machine
    ((128, 500), 8, 4),    # gcd 4
    ((100, 50), 8, 5),     # gcd 50: 5 divides, 50 / 5 = 10 >= 8 per device
    ((8, 8), 2, 1),        # 4 per device would be too few
    ((256, 256), 64, 8),   # at most MAX_AUTO
])
def test_auto_count(batches, cores, expected):
  assert host_devices.auto_count(batches, cores) == expected


def test_configure_leaves_an_explicit_flag_and_a_started_jax(monkeypatch):
  c = tiny_config()
  monkeypatch.setenv('XLA_FLAGS', '--foo=1 --xla_force_host_platform_device_count=3')
  assert host_devices.configure(-1, c) == 3
  monkeypatch.setenv('XLA_FLAGS', '')
  import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  assert host_devices.configure(2, c) == 1  # too late in this process: unchanged
  assert os.environ['XLA_FLAGS'] == ''
  with pytest.raises(ValueError, match='cpu_devices'):
    host_devices.configure(0, c)


def test_cpu_convs_flag_by_model_and_only_when_it_can_act(monkeypatch):
  ynn = f'{host_devices.YNN_FLAG}={host_devices.YNN_DOTS_ONLY}'
  monkeypatch.delitem(sys.modules, 'jax', raising=False)  # as before run.py imports it
  monkeypatch.setattr(host_devices, '_jaxlib_version', lambda: '0.10.2')
  monkeypatch.setenv('XLA_FLAGS', '--foo=1')
  assert host_devices.set_cpu_convs('auto', 'small_cnn') == 'ynnpack'
  assert os.environ['XLA_FLAGS'] == '--foo=1'
  assert host_devices.set_cpu_convs('auto', 'resnet18') == 'xla'
  assert os.environ['XLA_FLAGS'] == '--foo=1 ' + ynn
  assert host_devices.set_cpu_convs('ynnpack', 'resnet18') == 'XLA_FLAGS'  # user's flag wins
  assert os.environ['XLA_FLAGS'] == '--foo=1 ' + ynn
  monkeypatch.setenv('XLA_FLAGS', '')
  assert host_devices.set_cpu_convs('xla', 'small_cnn') == 'xla'
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setattr(host_devices, '_jaxlib_version', lambda: '0.11.0')  # not measured
  assert host_devices.set_cpu_convs('auto', 'wrn34_10') == 'ynnpack'
  assert os.environ['XLA_FLAGS'] == ''
  with pytest.raises(ValueError, match='cpu_convs'):
    host_devices.set_cpu_convs('fast', 'resnet18')


SHARDED_AA = r'''
import json, sys
import numpy as np
from configs import mnist_sglr
from sglr_jax import host_devices  # imports no jax: configure comes first
c = mnist_sglr.get_config()
c.train.batch_size = c.eval.batch_size = 32
n = host_devices.configure(-1, c)
import jax
from sglr_jax import models, parallel
from sglr_jax.attacks import autoattack as aa
model = models.create_model('small_cnn', 10, width=8)
x = np.random.default_rng(0).uniform(size=(40, 28, 28, 1)).astype(np.float32)
v = model.init(jax.random.key(0), x[:1], train=False)
fn = lambda z: model.apply(v, z, train=False)
y = aa.predict(fn, x, 32)
cfg = aa.AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=5, apgd_t_n_target_classes=2,
                          fab_n_iter=5, fab_n_target_classes=2, square_n_queries=50,
                          square_queries_per_call=25)
run = lambda sharding: aa.run_autoattack(fn, x, y, 2 / 255, key=jax.random.key(0),
                                         batch_size=32, config=cfg, progress=False,
                                         sharding=sharding)
sharding = parallel.batch_sharding(parallel.make_mesh(0))
one, two = run(None), run(sharding)
xs, ys, ms, ids = aa.placer(sharding)(x[:32], y[:32].astype(np.int32), np.ones(32, bool),
                                      np.arange(32, dtype=np.int32))
hlo = aa.run_batch.lower(aa._without_variables(fn),
                         'fab-t', cfg, (), xs, ys, ms, ids, jax.random.key(0),
                         np.float32(2 / 255), np.int32(0), sharding=sharding).compile().as_text()
collectives = sum(hlo.count(op + '(') for op in ('all-reduce', 'all-gather', 'all-to-all',
                                                 'collective-permute'))
print(json.dumps({'configured': n, 'devices': jax.device_count(), 'collectives': collectives,
                  'robust_one': one['robust'].tolist(), 'robust_two': two['robust'].tolist(),
                  'max_diff': float(np.abs(one['x_adv'] - two['x_adv']).max()),
                  'after': one['robust_acc_after']}))
'''


def test_two_host_devices_run_autoattack_split_with_the_same_verdicts():
  """A fresh process with 2 cores' worth of host devices (auto), AutoAttack's batches
  split over them: the same verdicts as on one device, points equal to float rounding
  (each device runs the one-device program on its rows), and FAB-T's program, the one
  XLA's automatic partitioning filled with row exchanges, has no collective at all."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 os.environ.get('XLA_FLAGS', ''))
  env = dict(os.environ, XLA_FLAGS=flags)
  out = subprocess.run([sys.executable, '-c', SHARDED_AA], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  cores = host_devices.usable_cores()
  assert r['configured'] == r['devices'] == host_devices.auto_count((32, 32), cores)
  assert r['robust_one'] == r['robust_two']
  assert r['collectives'] == 0
  assert r['max_diff'] <= 1e-5
  assert 0 < sum(r['robust_one']) < 40  # not vacuous: some points fall, some survive
