"""Data parallelism: 1 device == 4 devices, replicated == sharded label table, and a
checkpoint written on 4 devices restores on 2 and on 1 and training continues.

The 4-device side runs in a subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=4``);
the 1-device reference runs here. Both train the same 4 steps of PGD-AT + SGLR (refining
from the first step) on N = 126 examples, so the 4-device table has 2 padding rows.

Tolerance, 1 vs 4 devices: ``atol=1e-5, rtol=1e-5``. The two runs do the same
arithmetic except for the order of float32 sums: the batch mean of the loss and
gradient (one sum over 32 examples vs 4 sums over 8 then ``pmean``) and the
BatchNorm moments (synchronised over ``data``). Measured after 4 steps: at most
6e-8 absolute on parameters, statistics and table entries of size up to ~1 (a few
float32 ulps); the bound leaves a factor of ~150 for rounding amplified by the
attack and SGD. Real faults are far larger: unsynchronised BatchNorm or a missing
``pmean`` change parameters by ~1e-3 to 1e-1 after one step, and a lost table
write changes a row by (1 - momentum) * |p - y| ~ 0.1.
Replicated vs sharded table: identical arithmetic (a sharded read is a ``psum`` of
the owner's row and exact zeros), so they must agree bit for bit.
"""
import numpy as np
import pytest

import _mp_worker as w
from sglr_jax import checkpoints, errors, experiment, mesh as mesh_lib

ATOL = RTOL = 1e-5
STEPS, SAVE_AT = 4, 2
N = w.MP_OVERRIDES['data.train_size']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Both sides, the 4-device child running while the 1-device reference trains here.

  ``four``: arrays of the 4-device runs (both layouts), of the checkpoint taken after
  SAVE_AT steps and of its restorations on 2 devices; and the checkpoint directory.
  ``one``: the setup and the arrays after SAVE_AT and STEPS steps, and the losses.
  """
  tmp = str(tmp_path_factory.mktemp('four'))
  spec = {'job': 'steps', 'overrides': {}, 'layouts': ['replicated', 'sharded'],
          'steps': STEPS, 'save_at': SAVE_AT, 'ckpt': f'{tmp}/ckpt', 'out': f'{tmp}/out.npz'}
  proc, log = w.start_job(spec, devices=4, tmp=tmp)
  try:
    s = experiment.build(w.config())
    assert s.mesh.size == 1
    mid = {}
    st, losses = w.run_steps(
        s, experiment.initial_state(s), STEPS,
        on_step=lambda i, st: mid.update(w.arrays(st)) if i == SAVE_AT else None)
    one = (s, mid, w.arrays(st), np.asarray(losses))
    w.finish_job(proc, log, timeout=400)
  finally:
    w.stop([proc])
  z = np.load(spec['out'])
  return {'four': ({k: z[k] for k in z.files}, spec['ckpt']), 'one': one}


@pytest.fixture
def four(runs):
  return runs['four']


@pytest.fixture
def one(runs):
  return runs['one']


def _compare(ref: dict, other: dict, prefix: str, exact=False):
  for k, a in ref.items():
    b = other[prefix + k]
    if k == 'label_table':  # 126 rows on 1 and 2 devices, 128 on 4
      a, b = a[:N], b[:N]
    if exact:
      np.testing.assert_array_equal(a, b, err_msg=k)
    else:
      np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL, err_msg=k)


def test_one_and_four_devices_give_the_same_parameters_and_table(four, one):
  arrays4, _ = four
  _, _, ref, losses = one
  _compare(ref, arrays4, 'replicated/')
  np.testing.assert_allclose(losses, arrays4['replicated/losses'], rtol=RTOL)
  # not vacuous: the steps refined table rows and moved the parameters
  table = ref['label_table']
  assert np.sum(np.any(np.abs(table - np.round(table)) > 1e-3, axis=1)) >= 32
  assert np.all(arrays4['replicated/label_table'][N:] == 0)  # padding rows never written


def test_replicated_and_sharded_tables_give_identical_numbers(four):
  arrays4, _ = four
  rep = {k[len('replicated/'):]: v for k, v in arrays4.items() if k.startswith('replicated/')}
  _compare(rep, arrays4, 'sharded/', exact=True)


def test_four_device_checkpoint_restores_on_two_devices(four):
  arrays4, _ = four
  saved = {k[len('saved/'):]: v for k, v in arrays4.items() if k.startswith('saved/')}
  assert saved['label_table'].shape == (128, 10)  # 126 rows padded to a multiple of 4
  for layout in ('replicated', 'sharded'):
    _compare({**saved, 'label_table': saved['label_table'][:N]}, arrays4,
             f'restored2_{layout}/', exact=True)


def test_four_device_checkpoint_restores_on_one_device_and_continues(four, one):
  arrays4, ckpt = four
  s, mid, ref, _ = one
  target = experiment.initial_state(s)
  st, key = checkpoints.restore(ckpt, 'latest', target)
  assert key == SAVE_AT and int(st.step) == SAVE_AT
  assert st.label_table.shape == (N, 10)
  saved = {k[len('saved/'):]: v for k, v in arrays4.items() if k.startswith('saved/')}
  got = w.arrays(st)
  for k, v in saved.items():
    np.testing.assert_array_equal(got[k], v[:N] if k == 'label_table' else v, err_msg=k)
  _compare(mid, {'x/' + k: v for k, v in got.items()}, 'x/')  # ~ the 1-device run there
  st, _ = w.run_steps(s, st, STEPS - SAVE_AT, start=SAVE_AT)
  cont = {'x/' + k: v for k, v in w.arrays(st).items()}
  _compare(ref, cont, 'x/')  # == the uninterrupted 1-device run
  _compare({k[len('replicated/'):]: v for k, v in arrays4.items()
            if k.startswith('replicated/') and k != 'replicated/losses'}, cont, 'x/')


class _FakeMesh:
  def __init__(self, size):
    self.size = size


def test_table_rows_and_batch_checks():
  assert mesh_lib.table_rows(126, _FakeMesh(4)) == 128
  assert mesh_lib.table_rows(126, _FakeMesh(2)) == 126
  assert mesh_lib.table_rows(1_281_167, _FakeMesh(8)) == 1_281_168
  mesh_lib.check_batch_size(32, _FakeMesh(4), 'train.batch_size')
  with pytest.raises(ValueError, match='train.batch_size=30 must be divisible'):
    mesh_lib.check_batch_size(30, _FakeMesh(4), 'train.batch_size')
  with pytest.raises(errors.ConfigError, match='nearest valid values: 126 or 133$'):
    mesh_lib.check_batch_size(128, _FakeMesh(7), 'train.batch_size')
  with pytest.raises(errors.ConfigError, match='nearest valid values: 8$'):
    mesh_lib.check_batch_size(3, _FakeMesh(8), 'train.batch_size')


def test_eval_batch_rounds_up_to_the_device_count():
  # the CIFAR configs' 500 on 8 devices (an 8-GPU node, v5e-8) and 3, 6, 16 devices
  assert [mesh_lib.eval_batch_size(500, _FakeMesh(d)) for d in (1, 2, 3, 4, 6, 8, 16)] == [
      500, 500, 501, 500, 504, 504, 512]
  assert mesh_lib.eval_batch_size(1, _FakeMesh(8)) == 8
  with pytest.raises(errors.ConfigError, match='eval.batch_size=0'):
    mesh_lib.eval_batch_size(0, _FakeMesh(8))
  with pytest.raises(ValueError, match='table_sharding'):
    mesh_lib.state_specs({'a': 1}, 'columns')
  with pytest.raises(errors.ConfigError, match='parallel.num_devices=99'):
    mesh_lib.make_mesh(99)
