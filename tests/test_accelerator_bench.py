"""bench.accelerator: its JSON lines (a --tiny run), its FLOP counter and its peak table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from bench import accelerator
from conftest import ROOT

MEASUREMENTS = ('train_step', 'eval_pgd20', 'autoattack')
COMMON = ('model', 'arch', 'dtype', 'backend', 'device_kind', 'devices', 'batch',
          'peak_tflops_per_device', 'peak_source', 'date', 'measurement')
THROUGHPUT = ('images_per_s', 'seconds_per_step', 'flops_per_step', 'tflops', 'compile_s',
              'flops_counted')


def test_tiny_run_prints_every_measurement():
  # One model and one dtype keep the suite short: the WRN and bfloat16 go through the same
  # code with another config (the bf16 models themselves: tests/test_mixed_precision.py).
  out = subprocess.run([sys.executable, '-m', 'bench.accelerator', '--tiny', '--models', 'resnet18',
                        '--dtypes', 'float32', '--peak-tflops', '0.5'], cwd=ROOT,
                       env=dict(os.environ),
                       capture_output=True, text=True, timeout=1200, check=True)
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
  got = {(l['model'], l['dtype'], l['measurement']) for l in lines}
  assert got == {(m, d, k) for m in ('resnet18',)
                 for d in ('float32',) for k in MEASUREMENTS}
  assert len(lines) == len(got)  # one line each
  for line in lines:
    assert all(k in line for k in COMMON), line
    assert line['peak_tflops_per_device'] == 0.5 and line['peak_source'] == '--peak-tflops'
    if line['measurement'] == 'autoattack':
      assert line['points'] == 16 and line['budget'] == 'smoke'
      assert line['attack_s'] > 0 and line['setup_s'] > 0
      assert list(line['robust_acc_after']) == list(accelerator.autoattack.STANDARD_ATTACKS)
      continue
    for key in THROUGHPUT:
      assert line[key] > 0, (key, line)
    # the share of the peak is the achieved rate over the peak of the devices
    assert line['peak_share'] == pytest.approx(
        line['tflops'] / (0.5 * line['devices']), rel=0.01, abs=1e-4)
    assert line['images_per_s'] == pytest.approx(line['batch'] / line['seconds_per_step'],
                                                 rel=0.01)
    assert line['flops_per_step'] in (line['flops_xla'], line['flops_counted'])
    if line['measurement'] == 'train_step':
      assert line['projected_200_epochs_hours'] == pytest.approx(
          200 * (50_000 // 16) * line['seconds_per_step'] / 3600, rel=0.01)


def test_counted_flops_hand_computed():
  """A matmul inside a scan of 5 and a strided conv with its input gradient."""
  a, b = jnp.ones((4, 8)), jnp.ones((8, 16))

  def scanned(a, b):
    return jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=5)[1]

  assert accelerator.counted_flops(jax.make_jaxpr(scanned)(a, b).jaxpr) == 5 * 2 * 4 * 16 * 8

  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 5))  # NHWC, HWIO
  conv = lambda x: jax.lax.conv_general_dilated(
      x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  forward = 2 * (2 * 4 * 4 * 5) * (3 * 3 * 3)  # 2 * outputs * taps per output
  assert accelerator.counted_flops(jax.make_jaxpr(conv)(x).jaxpr) == forward
  grad = jax.make_jaxpr(jax.grad(lambda x: conv(x).sum()))(x).jaxpr
  # the input gradient is a conv over the 2x-dilated output gradient: the same products
  assert accelerator.counted_flops(grad) == 2 * forward


@pytest.mark.parametrize('kind,dtype,peak,name', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.4, 'H100 SXM'),
    ('NVIDIA H100 PCIe', 'float32', 378.0, 'H100 PCIe'),
    ('NVIDIA H200', 'bfloat16', 989.4, 'H200 SXM'),
    ('NVIDIA A100-SXM4-80GB', 'float32', 156.0, 'A100'),
    ('NVIDIA L4', 'bfloat16', 121.0, 'L4'),
    ('TPU v4', 'bfloat16', 275.0, 'TPU v4'),
    ('TPU v5 lite', 'float32', 197.0, 'TPU v5e'),
    ('TPU v5p', 'bfloat16', 459.0, 'TPU v5p'),
])
def test_peak_table_matches_device_kinds(kind, dtype, peak, name):
  assert accelerator.peak_tflops(kind, dtype, 0.0) == (peak, f'data sheet: {name}')
  assert accelerator.peak_tflops(kind, dtype, 2.0) == (2.0, '--peak-tflops')


def test_cpu_and_unknown_devices_have_no_peak():
  for kind in ('cpu', 'NVIDIA L40S', 'TPU v6 lite'):
    peak, source = accelerator.peak_tflops(kind, 'float32', 0.0)
    assert peak is None and '--peak-tflops' in source
