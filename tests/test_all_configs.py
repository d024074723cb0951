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


@pytest.mark.parametrize('name', CONFIGS)
def test_config_trains_two_steps_and_evaluates(name, cifar_dir, tmp_path, tmp_path_factory):
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
  if c.objective.name == 'kd':  # its teachers: a PGD-AT run of the same tiny setup
    t = c.copy_and_resolve_references()
    t.objective.name, t.train.swa_start_epoch = 'at', -1
    twd = str(tmp_path_factory.mktemp('teacher'))
    loop.train_and_evaluate(t, twd, progress=False)
    c.objective.teacher_workdir = twd
    if c.objective.std_teacher_workdir:
      c.objective.std_teacher_workdir = twd
  wd = str(tmp_path)
  hist = loop.train_and_evaluate(c, wd, progress=False)
  assert len(hist) == 1 and math.isfinite(hist[0]['train_loss'])
  if noisy:
    assert 0 <= hist[0]['train_noisy_fit'] <= 1 and 0 <= hist[0]['train_clean_acc'] <= 1
  res = evaluate.evaluate(c, wd, progress=False)
  assert res['final']['epoch'] == 1 and 0 <= res['final']['pgd20_acc'] <= 1
  assert json.load(open(os.path.join(wd, 'config.json')))['data']['name'] == c.data.name
  if c.sglr.enabled or c.objective.name == 'te':
    # the first epoch already refined the table rows of the 16 examples it saw
    st, _ = experiment.restore(experiment.build(c), wd, 'final')
    table = np.asarray(st.label_table)[:16]
    assert np.all(table.max(1) < 1.0)
