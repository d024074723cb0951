"""Every config loads and validates; bad values give one clear error naming the field."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config
from sglr_jax import config_validation, errors, experiment

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith('_'))  # _*.py: shared helpers


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_and_validates(name):
  c = importlib.import_module(f'sglr_jax.configs.{name}').get_config()
  config_validation.validate(c)
  c.to_json()  # plain values only: serialisable


BAD = [
    ('data.name', 'imagenet', 'data.name'),
    ('model.name', 'vgg', 'model.name'),
    ('objective.name', 'mart', 'objective.name'),
    ('attack.eps', 1.5, 'attack.eps'),
    ('eval.eps', -0.1, 'eval.eps'),
    ('sglr.alpha', 1.2, 'sglr.alpha'),
    ('sglr.momentum', -0.5, 'sglr.momentum'),
    ('sglr.start_epoch', 3, 'sglr.start_epoch'),
    ('sglr.table_sharding', 'striped', 'sglr.table_sharding'),
    ('model.features', (64, 0), 'model.features'),
    ('eval.autoattack_budget', 'fast', 'eval.autoattack_budget'),
    ('model.dense', 64, 'model.dense'),  # small_cnn only (the default model is small_cnn)
    ('schedule.name', 'step', 'schedule.name'),
    ('train.checkpoint_every_steps', -1, 'train.checkpoint_every_steps'),
    ('objective.awp_gamma', -0.01, 'objective.awp_gamma'),
    ('train.swa_start_epoch', 3, 'train.swa_start_epoch'),  # tiny: 3 epochs
    ('train.swa_start_epoch', -2, 'train.swa_start_epoch'),
    ('train.swa_every_steps', -1, 'train.swa_every_steps'),
]


@pytest.mark.parametrize('field,value,named', BAD)
def test_bad_values_name_the_field(field, value, named):
  c = tiny_config(**{field: value})
  if field == 'model.dense':
    c.model.name = 'resnet18'
  with pytest.raises(errors.ConfigError, match=named.replace('.', r'\.')):
    config_validation.validate(c)


def test_cli_errors_are_one_line_and_leave_workdir_alone(tmp_path):
  wd = tmp_path / 'w'
  for args, needle in [
      (['--config=configs/nope.py'], 'no such file'),
      (['--config=configs/mnist_sglr.py', '--config.sglr.alpha=2.0'], 'sglr.alpha'),
      (['--config=configs/mnist_sglr.py', '--mode=eval'], "no 'best' checkpoint"),
  ]:
    p = subprocess.run([sys.executable, 'run.py', f'--workdir={wd}'] + args, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert 'Traceback' not in p.stderr
    assert needle in p.stderr
    assert not wd.exists() or not any(wd.iterdir())


def _leaves(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, f'{prefix}{k}.')
    else:
      yield prefix + k


def test_readme_documents_every_config_field():
  readme = open(os.path.join(ROOT, 'README.md')).read()
  c = importlib.import_module('sglr_jax.configs.default').get_config().to_dict()
  missing = [f for f in _leaves(c) if f'| `{f}` |' not in readme]
  assert not missing, f'README config reference lacks {missing}'


def test_readme_lists_every_config_file():
  readme = open(os.path.join(ROOT, 'README.md')).read()
  missing = [n for n in CONFIGS if f'configs/{n}.py' not in readme]
  assert not missing, f'README does not list {missing}'


def test_small_cnn_features_and_dense_from_config():
  """The METHOD.md probe's net (conv64-s2, conv64-s2, dense 1024), hand-counted:
  3*3*1*64 + 3*3*64*64 conv kernels, 2 x (64 scale + 64 bias) BatchNorm,
  (7*7*64)*1024 + 1024 dense, 1024*10 + 10 output."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sglr_jax import models  # pylint: disable=g-import-not-at-top
  c = tiny_config(**{'model.features': (64, 64), 'model.dense': 1024, 'model.width': 0})
  config_validation.validate(c)
  model = models.create_model(c.model.name, 10, **experiment.model_kwargs(c))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 28, 28, 1)),
                                             train=False))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params']))
  assert count == 9 * 64 + 9 * 64 * 64 + 2 * 128 + 7 * 7 * 64 * 1024 + 1024 + 10250
  with pytest.raises(errors.ConfigError, match='model.features'):
    config_validation.validate(tiny_config(**{'model.features': (64, 64), 'model.width': 8}))


def test_sglr_cannot_combine_with_an_objective_that_has_its_own_table():
  with pytest.raises(errors.ConfigError, match="objective.name='te'.*allowed objectives: at, ls, "
                     'trades'):
    config_validation.validate(tiny_config(**{'objective.name': 'te'}))


def test_experiment_params_read_the_config():
  c = tiny_config('mnist_noisy_sglr', **{'model.width': 0, 'train.checkpoint_every_steps': 3})
  p = experiment.data_params(c)
  assert (p.name, p.train_size, p.test_size, p.noise_kind, p.noise_rate) == (
      'mnist', 256, 100, c.data.noise.kind, c.data.noise.rate)
  t = experiment.train_params(c)
  assert (t.epochs, t.batch_size, t.checkpoint_every_steps) == (3, 64, 3)
  e = experiment.eval_params(c)
  assert (e.steps, e.batch_size, e.autoattack_budget) == (3, 50, 'smoke')
  assert isinstance(e.suite, tuple)
  sc = experiment.step_config(c, 10)
  assert sc.sglr.start_epoch == 1 and sc.objective.name == c.objective.name
  assert experiment.sglr_params(tiny_config('mnist_at')) is None


def test_configs_written_before_awp_kd_swa_still_build():
  """A workdir's config.json from before these fields (evaluation reads it): all off."""
  c = tiny_config('mnist_at')
  for f in ('awp_gamma', 'awp_warmup_epochs', 'teacher_workdir', 'std_teacher_workdir',
            'kd_temperature', 'kd_ce_weight', 'kd_weight', 'kd_std_weight'):
    del c.objective[f]
  del c.train['swa_start_epoch'], c.train['swa_every_steps']
  config_validation.validate(c)
  sc = experiment.step_config(c, 10, 4)
  assert sc.awp is None and sc.swa is None
  assert experiment.teacher_workdirs(c) == ()


def test_awp_and_swa_params_read_the_config():
  c = tiny_config('mnist_kd_swa', **{'objective.awp_gamma': 0.01, 'objective.awp_warmup_epochs': 1,
                                     'train.swa_start_epoch': 2})
  sc = experiment.step_config(c, 10, 4)
  assert (sc.awp.gamma, sc.awp.warmup_epochs) == (0.01, 1)
  assert (sc.swa.start_step, sc.swa.every_steps) == (8, 4)  # every 0: once per epoch
  c.train.swa_every_steps = 3
  assert experiment.step_config(c, 10, 4).swa.every_steps == 3
  assert experiment.teacher_workdirs(c) == ('runs/mnist_at', 'runs/mnist_standard')
  with pytest.raises(errors.ConfigError, match='objective.awp_warmup_epochs'):
    config_validation.validate(tiny_config(**{'objective.awp_gamma': 0.01,
                                              'objective.awp_warmup_epochs': 3}))
