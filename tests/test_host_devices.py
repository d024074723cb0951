"""Splitting a CPU host into several XLA devices, and XLA:CPU's conv library flag."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from sglr_jax.platforms.xla_cpu import host_devices

_CONFIGURE = dict(batch_sizes=(64, 50), model_name='small_cnn', cpu_convs='auto',
                  distributed=False)


@pytest.mark.parametrize('batches,cores,expected', [
    ((128, 500), 2, 2),    # the main job on this machine
    ((128, 500), 8, 4),    # gcd 4
    ((100, 50), 8, 5),     # gcd 50: 5 divides, 50 / 5 = 10 >= 8 per device
    ((8, 8), 2, 1),        # 4 per device would be too few
    ((256, 256), 64, 8),   # at most MAX_AUTO
])
def test_auto_count(batches, cores, expected):
  assert host_devices.auto_count(batches, cores) == expected


@pytest.fixture(autouse=True)
def _cpu_platform(monkeypatch):
  """These tests are about CPU hosts: the platform gate (tested below) must pass, also on
  a machine with an accelerator plugin installed."""
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')


def test_configure_leaves_an_explicit_flag_and_a_started_jax(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--foo=1 --xla_force_host_platform_device_count=3')
  assert host_devices.configure(-1, **_CONFIGURE) == 3
  monkeypatch.setenv('XLA_FLAGS', '')
  import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  assert host_devices.configure(2, **_CONFIGURE) == 1  # too late in this process: unchanged
  assert os.environ['XLA_FLAGS'] == ''
  with pytest.raises(ValueError, match='cpu_devices'):
    host_devices.configure(0, **_CONFIGURE)


def test_configure_auto_count_and_one_device_per_process_when_distributed(monkeypatch):
  monkeypatch.delitem(sys.modules, 'jax', raising=False)  # as before the entry point imports it
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS', raising=False)
  monkeypatch.setattr(host_devices, 'usable_cores', lambda: 8)
  flag = host_devices.FLAG
  monkeypatch.setenv('XLA_FLAGS', '')
  kw = dict(_CONFIGURE, batch_sizes=(128, 500))
  assert host_devices.configure(-1, **kw) == 4  # gcd 4 on 8 cores
  assert os.environ['XLA_FLAGS'] == f'{flag}=4'
  for distributed, env in ((True, None), (False, 'localhost:1234')):
    monkeypatch.setenv('XLA_FLAGS', '')
    if env:
      monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', env)
    assert host_devices.configure(-1, **dict(kw, distributed=distributed)) == 1
    assert os.environ['XLA_FLAGS'] == ''
  monkeypatch.setenv('XLA_FLAGS', '')
  assert host_devices.configure(3, **dict(kw, distributed=True)) == 3  # explicit count wins
  assert os.environ['XLA_FLAGS'] == f'{flag}=3'


def test_cpu_convs_flag_by_model_and_only_when_it_can_act(monkeypatch):
  ynn = f'{host_devices.YNN_FLAG}={host_devices.YNN_DOTS_ONLY}'
  monkeypatch.delitem(sys.modules, 'jax', raising=False)  # as before the entry point imports it
  monkeypatch.setenv('XLA_FLAGS', '--foo=1')
  assert host_devices.set_cpu_convs('auto', 'small_cnn') == 'ynnpack'
  assert os.environ['XLA_FLAGS'] == '--foo=1'
  assert host_devices.set_cpu_convs('auto', 'resnet18') == 'xla'
  assert os.environ['XLA_FLAGS'] == '--foo=1 ' + ynn
  assert host_devices.set_cpu_convs('ynnpack', 'resnet18') == 'XLA_FLAGS'  # user's flag wins
  assert os.environ['XLA_FLAGS'] == '--foo=1 ' + ynn
  monkeypatch.setenv('XLA_FLAGS', '')
  assert host_devices.set_cpu_convs('xla', 'small_cnn') == 'xla'
  for name in ('wrn34_10', 'resnet', 'resnet_bottleneck', 'preact_resnet', 'wide_resnet'):
    monkeypatch.setenv('XLA_FLAGS', '')
    assert host_devices.set_cpu_convs('auto', name) == 'xla', name
  monkeypatch.setenv('XLA_FLAGS', '')
  assert host_devices.configure(1, **dict(_CONFIGURE, model_name='wide_resnet')) == 1
  assert os.environ['XLA_FLAGS'] == ynn
  monkeypatch.setitem(sys.modules, 'jax', sys.modules.get('jax') or object())
  monkeypatch.setenv('XLA_FLAGS', '')
  assert host_devices.set_cpu_convs('xla', 'resnet18') == 'ynnpack'  # jax started: too late
  assert os.environ['XLA_FLAGS'] == ''
  with pytest.raises(ValueError, match='cpu_convs'):
    host_devices.set_cpu_convs('fast', 'resnet18')


def _write_fake_plugin(tmp_path) -> str:
  """A ``jax_plugins`` namespace package with one plugin module, as CUDA's wheel installs
  (it raises if imported: the gate must only look). Returns the folder to put on the path."""
  pkg = tmp_path / 'site' / 'jax_plugins' / 'xla_fake_gpu'
  pkg.mkdir(parents=True, exist_ok=True)
  (pkg / '__init__.py').write_text('raise ImportError("never imported by the gate")\n')
  return str(tmp_path / 'site')


def _fake_plugin(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(_write_fake_plugin(tmp_path))
  monkeypatch.delitem(sys.modules, 'jax_plugins', raising=False)


@pytest.mark.parametrize('platforms,cpu', [
    ('cpu', True), ('cpu,cuda', True), ('CPU', True), ('cuda', False), ('tpu', False),
    ('cuda,cpu', False), ('rocm', False)])
def test_cpu_host_from_jax_platforms(platforms, cpu):
  assert host_devices.cpu_host({'JAX_PLATFORMS': platforms}) is cpu
  assert host_devices.cpu_host({'JAX_PLATFORM_NAME': platforms}) is cpu  # the older name


def test_an_installed_accelerator_plugin_makes_no_cpu_host(tmp_path, monkeypatch):
  if host_devices.accelerator_plugins():
    pytest.skip('an accelerator plugin is installed here: the premise below does not hold')
  assert host_devices.cpu_host({}) is True
  _fake_plugin(tmp_path, monkeypatch)
  assert host_devices.accelerator_plugins() == ['xla_fake_gpu']
  assert host_devices.cpu_host({}) is False
  assert host_devices.cpu_host({'JAX_PLATFORMS': 'cpu'}) is True  # the user's choice wins
  monkeypatch.delenv('JAX_PLATFORMS')
  monkeypatch.delitem(sys.modules, 'jax', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--foo=1')
  kw = dict(_CONFIGURE, model_name='resnet18')
  assert host_devices.configure(-1, **kw) == 1
  assert host_devices.set_cpu_convs('xla', 'resnet18') == ''
  assert host_devices.one_per_core() == 1
  assert os.environ['XLA_FLAGS'] == '--foo=1'


NO_JAX_CLI = r'''
import json, os, sys
from sglr_jax import cli
from sglr_jax.configs import cifar10_wrn34_sglr
cli._configure_cpu_devices(-1, cifar10_wrn34_sglr.get_config())
print(json.dumps({'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''), 'jax': 'jax' in sys.modules}))
'''


@pytest.mark.parametrize('platforms', ['cuda', 'tpu', ''])
def test_the_command_line_sets_no_xla_cpu_flag_off_cpu(platforms, tmp_path):
  """The command line's process setup in a fresh process, before jax starts: with
  ``JAX_PLATFORMS=cuda`` (or tpu), or a GPU plugin installed and no ``JAX_PLATFORMS``,
  neither the host device count nor the conv flag is set (a WRN config: both would be
  on a CPU host), and jax is not imported to decide."""
  env = dict(os.environ, XLA_FLAGS='--foo=1', JAX_PLATFORMS=platforms)
  if not platforms:
    env['PYTHONPATH'] = os.pathsep.join([_write_fake_plugin(tmp_path), ROOT])
  out = subprocess.run([sys.executable, '-c', NO_JAX_CLI], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.splitlines()[-1]) == {'XLA_FLAGS': '--foo=1', 'jax': False}
  cpu = subprocess.run([sys.executable, '-c', NO_JAX_CLI], cwd=ROOT,
                       env=dict(env, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
                       timeout=120, check=False)
  flags = json.loads(cpu.stdout.splitlines()[-1])['XLA_FLAGS']
  assert host_devices.YNN_FLAG in flags  # the control: a CPU host gets the conv flag


# Which ops of a conv + matmul program XLA:CPU hands to YNNPACK (a ``ynn_fusion``).
YNN_PROBE = r'''
import json
import jax, jax.numpy as jnp
from jax import lax
f = jax.jit(lambda x, w, m: (
    lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
    x.reshape(-1, 16) @ m))
hlo = f.lower(jnp.ones((8, 16, 16, 16)), jnp.ones((3, 3, 16, 32)),
              jnp.ones((16, 64))).compile().as_text()
ynn = [l for l in hlo.splitlines() if 'ynn_fusion' in l and ' fusion(' in l]
print(json.dumps({op: sum(f'/{op}"' in l for l in ynn) for op in ('conv_general_dilated',
                                                                   'dot_general')}))
'''


def _probe(xla_flags: str):
  env = dict(os.environ, XLA_FLAGS=xla_flags)
  return subprocess.run([sys.executable, '-c', YNN_PROBE], env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def test_pinned_jaxlib_accepts_the_ynnpack_flag_and_it_keeps_convs_with_xla():
  """The flag is experimental: a jaxlib that renames or drops it aborts at start (an
  unknown XLA flag is fatal), so an upgrade fails here rather than in a user's run."""
  default = _probe('')
  assert default.returncode == 0, default.stderr[-3000:]
  # The premise: by default this jaxlib hands convolutions and matmuls to YNNPACK.
  assert json.loads(default.stdout.splitlines()[-1]) == {'conv_general_dilated': 1,
                                                         'dot_general': 1}
  ours = _probe(f'{host_devices.YNN_FLAG}={host_devices.YNN_DOTS_ONLY}')
  assert ours.returncode == 0, ours.stderr[-3000:]
  # With the flag XLA runs the convolution itself; matmuls stay with YNNPACK.
  assert json.loads(ours.stdout.splitlines()[-1]) == {'conv_general_dilated': 0,
                                                      'dot_general': 1}
  # The probe can fail: a misspelt flag aborts the process.
  typo = _probe(f'{host_devices.YNN_FLAG}_typo={host_devices.YNN_DOTS_ONLY}')
  assert typo.returncode != 0 and 'Unknown flag' in typo.stderr


SHARDED_AA = r'''
import json, sys
import numpy as np
from sglr_jax.platforms.xla_cpu import host_devices  # imports no jax: configure comes first
n = host_devices.configure(-1, batch_sizes=(32, 32), model_name='small_cnn', cpu_convs='auto',
                           distributed=False)
import jax
from sglr_jax import mesh, models
from sglr_jax.attacks import autoattack as aa
from sglr_jax.attacks.autoattack import programs, runner
from sglr_jax.platforms.xla_cpu import parts
model = models.create_model('small_cnn', 10, width=8, **parts.model_parts('small_cnn'))
ops = parts.attack_ops()  # what a CPU run injects
x = np.random.default_rng(0).uniform(size=(40, 28, 28, 1)).astype(np.float32)
v = model.init(jax.random.key(0), x[:1], train=False)
fn = lambda z: model.apply(v, z, train=False)
y = aa.predict(fn, x, 32)
cfg = aa.AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=5, apgd_t_n_target_classes=2,
                          fab_n_iter=5, fab_n_target_classes=2, square_n_queries=50,
                          square_queries_per_call=25)
run = lambda sharding: aa.run_autoattack(fn, x, y, 2 / 255, key=jax.random.key(0),
                                         batch_size=32, config=cfg, progress=False,
                                         sharding=sharding, ops=ops)
sharding = mesh.batch_sharding(mesh.make_mesh(0))
one, two = run(None), run(sharding)
xs, ys, ms, ids = runner.placer(sharding)(x[:32], y[:32].astype(np.int32), np.ones(32, bool),
                                          np.arange(32, dtype=np.int32))
model_fn, variables = programs.as_model(fn, None)
hlo = programs.run_batch.lower(model_fn, 'fab-t', cfg, variables, xs, ys, ms, ids,
                               jax.random.key(0), np.float32(2 / 255), np.int32(0), ops=ops,
                               sharding=sharding).compile().as_text()
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
