"""KD-AT: the loss against a hand-computed value, the step against its teachers' logits,
and a missing or incompatible teacher as one clear error before training."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from sglr_jax import data, errors, experiment, mesh as mesh_lib, objectives
from sglr_jax.objectives import kd
from sglr_jax.training import loop, step as step_lib


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_kd_loss_matches_hand_computed_value():
  hp = objectives.ObjectiveParams('kd', 0.1, 0.01, 1, kd_temperature=2.0, kd_ce_weight=0.3,
                                  kd_weight=0.6, kd_std_weight=0.1)
  s = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)  # student
  g1 = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)  # robust teacher
  g2 = np.array([[4.0, -2.0, 0.0], [1.0, -1.0, 2.0]], np.float32)  # standard teacher
  y = np.array([0, 2])
  # by hand, example 0: CE = log(e^2 + 1 + e^-1) - 2
  ce0 = np.log(np.exp(2) + 1 + np.exp(-1)) - 2.0
  ls0 = np.array([1.0, 0.0, -0.5]) - np.log(np.exp(1) + 1 + np.exp(-0.5))  # log softmax(s/2)
  p1 = np.exp([0.5, 1.0, 0.0]) / np.exp([0.5, 1.0, 0.0]).sum()
  p2 = np.exp([2.0, -1.0, 0.0]) / np.exp([2.0, -1.0, 0.0]).sum()
  want0 = 0.3 * ce0 + 0.6 * 4 * -(p1 @ ls0) + 0.1 * 4 * -(p2 @ ls0)
  # example 1 through the same formula in numpy
  ce1 = -_log_softmax(s[1:])[0, 2]
  ls1 = _log_softmax(s[1:] / 2)[0]
  want1 = (0.3 * ce1 + 0.6 * 4 * -(np.exp(_log_softmax(g1[1:] / 2))[0] @ ls1)
           + 0.1 * 4 * -(np.exp(_log_softmax(g2[1:] / 2))[0] @ ls1))
  ce = objectives.get('kd').loss(hp, jnp.asarray(s), None, jax.nn.one_hot(y, 3), None, 0)
  got = kd.loss_with_teachers(hp, ce, jnp.asarray(s), (jnp.asarray(g1), jnp.asarray(g2)))
  np.testing.assert_allclose(got, [want0, want1], rtol=1e-5)
  # one teacher: its term only
  got1 = kd.loss_with_teachers(hp, ce, jnp.asarray(s), (jnp.asarray(g1),))
  np.testing.assert_allclose(got1[0], 0.3 * ce0 + 0.6 * 4 * -(p1 @ ls0), rtol=1e-5)
  # no gradient into the teachers
  dg = jax.grad(lambda g: jnp.sum(kd.distillation(hp, jnp.asarray(s), (g,))))(jnp.asarray(g1))
  np.testing.assert_array_equal(dg, 0.0)


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  """A PGD-AT run of one epoch: the robust (and, here, also the standard) teacher."""
  wd = str(tmp_path_factory.mktemp('teacher'))
  c = tiny_config('mnist_at', **{'train.epochs': 1, 'schedule.decay_epochs': (1,),
                                 'train.train_fit_every_epochs': 0, 'parallel.num_devices': 1,
                                 'eval.suite': ('natural', 'pgd20')})
  loop.train_and_evaluate(c, wd, progress=False)
  return wd


def _kd_config(teacher_wd, **overrides):
  return tiny_config('mnist_kd_swa', **{
      'objective.teacher_workdir': teacher_wd, 'objective.std_teacher_workdir': teacher_wd,
      'parallel.num_devices': 1, 'train.swa_start_epoch': -1, **overrides})


def test_step_loss_uses_the_teachers_logits(teacher):
  """eps = 0 makes x' = x, so the step's loss is computable here from the student's
  train-mode logits and the teachers' inference-mode logits on the clean batch."""
  s = experiment.build(_kd_config(teacher, **{'attack.eps': 0.0}))
  teachers = experiment.load_teachers(s)
  assert len(teachers) == 2
  st = experiment.initial_state(s)
  batch = next(data.train_batches(s.ds, 0, 0, s.train.batch_size))
  step = step_lib.make_train_step(s.model, s.step, s.mesh, st, ops=s.attack_ops,
                                  teachers=teachers)
  _, m = step(jax.tree.map(jnp.copy, st), mesh_lib.to_global(batch, s.mesh))
  x = jnp.asarray(batch['image'], jnp.float32) / 255.0
  apply = jax.jit(jax.shard_map(
      lambda v, z: s.model.apply(v, z, train=True, mutable=['batch_stats'])[0], mesh=s.mesh,
      in_specs=jax.sharding.PartitionSpec(), out_specs=jax.sharding.PartitionSpec(),
      check_vma=False))
  student = np.asarray(apply(experiment.variables_of(st), x))
  g = [np.asarray(tm.apply(tv, x, train=False)) for tm, tv in teachers]
  hp, t = s.step.objective, s.step.objective.kd_temperature
  ce = -_log_softmax(student)[np.arange(len(x)), batch['label']]
  ls = _log_softmax(student / t)
  want = hp.kd_ce_weight * ce
  for wgt, gl in ((hp.kd_weight, g[0]), (hp.kd_std_weight, g[1])):
    want = want + wgt * t * t * -(np.exp(_log_softmax(gl / t)) * ls).sum(-1)
  np.testing.assert_allclose(float(m['loss_sum']), want.sum(), rtol=1e-4)


def test_missing_teacher_is_one_error_before_anything_is_written(tmp_path):
  c = _kd_config(str(tmp_path / 'nowhere'))
  wd = tmp_path / 'run'
  with pytest.raises(errors.NoCheckpointError, match='objective.teacher_workdir='):
    loop.train_and_evaluate(c, str(wd), progress=False)
  assert not wd.exists() or not os.listdir(wd)


def test_teacher_of_another_dataset_is_a_config_error(teacher, tmp_path):
  other = tmp_path / 'cifar_teacher'
  other.mkdir()
  cfg = json.load(open(os.path.join(teacher, 'config.json')))
  cfg['data']['name'] = 'cifar10'
  json.dump(cfg, open(other / 'config.json', 'w'))
  c = _kd_config(teacher, **{'objective.std_teacher_workdir': str(other)})
  with pytest.raises(errors.ConfigError, match=r'objective.std_teacher_workdir=.*cifar10'):
    experiment.load_teachers(experiment.build(c))


def test_kd_config_checks():
  with pytest.raises(errors.ConfigError, match='objective.teacher_workdir'):
    experiment.build(tiny_config('mnist_kd_at', **{'objective.teacher_workdir': ''}))
  with pytest.raises(errors.ConfigError, match='objective.std_teacher_workdir'):
    experiment.build(tiny_config('mnist_kd_at', **{'objective.kd_std_weight': 0.1}))
  with pytest.raises(errors.ConfigError, match='objective.kd_temperature'):
    experiment.build(tiny_config('mnist_kd_at', **{'objective.kd_temperature': 0.0}))
