"""Every config in configs/ trains two steps and evaluates once, with a tiny model.

CIFAR configs read a tiny CIFAR written by tfds itself into a temp data_dir
(``fixtures.tfds_prepared.write_prepared``; ``tfds.testing.mock_data`` cannot serve
``tfds.data_source`` without TensorFlow, see tests/test_tfds_cifar.py); MNIST configs
use the packaged digits. A config file added to configs/ is picked up automatically.
"""
import glob
import importlib
import json
import math
import os

import numpy as np
import pytest

from conftest import ROOT
from fixtures.tfds_prepared import write_prepared
from sglr_jax import experiment, models
from sglr_jax.evaluation import evaluate
from sglr_jax.training import loop

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith('_'))  # _*.py: shared helpers
TINY_MODEL = {  # (width, depth) per model: a few thousand parameters each
    'small_cnn': (8, ()), 'resnet18': (4, (1, 1, 1, 1)), 'resnet34': (4, (1, 1, 1, 1)),
    'resnet50': (2, (1, 1, 1, 1)), 'preact_resnet18': (4, (1, 1, 1, 1)),
    'wrn34_10': (1, (10,)),
}


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  rng = np.random.default_rng(0)
  for name, k in (('cifar10', 10), ('cifar100', 100)):
    split = lambda n: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, k, n))
    write_prepared(name, d, {'train': split(16), 'test': split(8)})
  return d


def test_every_config_is_covered():
  assert {'default', 'mnist_sglr', 'mnist_at', 'cifar100_sglr'} <= set(CONFIGS)


def _signature(c, *fields):
  def get(path):
    node = c
    for k in path.split('.'):
      node = node[k]
    return str(node)
  return tuple(get(f) for f in fields)


# A config whose code path another config already covers (only values differ: cifar10 vs
# cifar100, another teacher path...) is built and validated, not trained again; of the
# trained ones, one per model family, threat model and weight averaging runs --mode=eval.
PATH_FIELDS = ('model.name', 'objective.name', 'sglr.enabled', 'objective.awp_gamma',
               'train.swa_start_epoch', 'attack.norm', 'data.noise.kind', 'model.batch_norm',
               'schedule.name', 'data.augment', 'objective.std_teacher_workdir')
EVAL_FIELDS = ('model.name', 'eval.norm', 'train.swa_start_epoch')


def _firsts(fields) -> set:
  seen, out = set(), set()
  for name in CONFIGS:
    c = importlib.import_module(f'sglr_jax.configs.{name}').get_config()
    key = _signature(c, *fields)
    key = key[:-1] + (key[-1] != '',) if fields is PATH_FIELDS else key
    if key not in seen:
      seen.add(key)
      out.add(name)
  return out


TRAINED = _firsts(PATH_FIELDS)
EVALUATED = TRAINED & _firsts(EVAL_FIELDS)


@pytest.fixture(scope='module')
def teachers(tmp_path_factory):
  """{dataset: workdir} of one tiny PGD-AT teacher per dataset, trained on first use."""
  return {}


@pytest.mark.parametrize('name', CONFIGS)
def test_config_trains_two_steps_and_evaluates(name, cifar_dir, tmp_path, tmp_path_factory,
                                               teachers):
  c = importlib.import_module(f'sglr_jax.configs.{name}').get_config()
  width, depth = TINY_MODEL[c.model.name]
  if depth:  # a preset's name fixes its depth: the same architecture under its generic name
    c.model.name = models.GENERIC[c.model.name]
  c.model.width, c.model.depth, c.model.dense, c.model.features = width, depth, 0, ()
  c.data.data_dir = cifar_dir
  c.data.train_size, c.data.test_size = 16, 8
  c.train.batch_size, c.train.epochs = 8, 1  # 16 / 8 = two steps
  c.schedule.decay_epochs = (1,) if c.schedule.name == 'piecewise' else ()
  c.sglr.start_epoch = 0
  c.attack.steps, c.eval.steps, c.eval.batch_size = 1, 1, 8
  c.eval.suite = ('natural', 'pgd20', 'ece')
  c.parallel.num_devices = 1
  noisy = c.data.noise.kind != 'none' and c.data.noise.rate > 0
  c.train.train_fit_every_epochs = 1 if noisy else 0  # the memorisation metrics
  if c.train.get('swa_start_epoch', -1) >= 0:  # averaging from the one epoch
    c.train.swa_start_epoch = 0
  if name not in TRAINED:
    exp = experiment.build(c)  # validates; its code path is trained by another config
    assert exp.ds.name == c.data.name and exp.steps_per_epoch == 2
    return
  if c.objective.name == 'kd':  # its teachers: a PGD-AT run of the same tiny setup
    if c.data.name not in teachers:
      t = c.copy_and_resolve_references()
      t.objective.name, t.train.swa_start_epoch = 'at', -1
      t.objective.teacher_workdir = t.objective.std_teacher_workdir = ''
      teachers[c.data.name] = str(tmp_path_factory.mktemp('teacher'))
      loop.train_and_evaluate(t, teachers[c.data.name], progress=False)
    c.objective.teacher_workdir = teachers[c.data.name]
    if c.objective.std_teacher_workdir:
      c.objective.std_teacher_workdir = teachers[c.data.name]
  wd = str(tmp_path)
  hist = loop.train_and_evaluate(c, wd, progress=False)
  assert len(hist) == 1 and math.isfinite(hist[0]['train_loss'])
  if noisy:
    assert 0 <= hist[0]['train_noisy_fit'] <= 1 and 0 <= hist[0]['train_clean_acc'] <= 1
  if name in EVALUATED:
    res = evaluate.evaluate(c, wd, progress=False)
    assert res['final']['epoch'] == 1 and 0 <= res['final']['pgd20_acc'] <= 1
  assert json.load(open(os.path.join(wd, 'config.json')))['data']['name'] == c.data.name
  if c.sglr.enabled or c.objective.name == 'te':
    # the first epoch already refined the table rows of the 16 examples it saw
    st, _ = experiment.restore(experiment.build(c), wd, 'final')
    table = np.asarray(st.label_table)[:16]
    assert np.all(table.max(1) < 1.0)
