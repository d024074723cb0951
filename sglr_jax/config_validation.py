"""Config validation: one clear line naming the field and the allowed values.

Runs (from ``experiment.build``) before anything touches the workdir, so a bad config
damages nothing. ``parallel.cpu_convs`` is not checked here: it is a process setting of
XLA:CPU that only the command line applies, before jax starts, and checks there
(``platforms.xla_cpu.host_devices``).
"""
from __future__ import annotations

from sglr_jax import data, models, objectives
from sglr_jax.attacks.autoattack.config import BUDGETS
from sglr_jax.data.noise import NOISE_KINDS
from sglr_jax.errors import ConfigError
from sglr_jax.mesh import TABLE_LAYOUTS
from sglr_jax.training.state import SCHEDULES

EVAL_METRICS = ('natural', 'pgd20', 'autoattack', 'ece', 'transfer')
ATTACK_NORMS = ('Linf', 'L2')  # attack.norm, eval.norm
AUTOATTACK_VERSIONS = ('standard', 'rand')
EVAL_PRECISIONS = ('float32', 'highest', 'default')  # jax.default_matmul_precision names
CHECKPOINT_COMMITS = ('auto', 'rename', 'commit_file')  # train.checkpoint_commit

__all__ = ['ConfigError', 'EVAL_METRICS', 'validate']


def _choice(field, value, allowed):
  if value not in allowed:
    raise ConfigError(f'{field}={value!r} is not allowed; allowed: {", ".join(map(str, allowed))}')


def _unit(field, value, low=0.0, high=1.0):
  if not low <= float(value) <= high:
    raise ConfigError(f'{field}={value!r} must lie in [{low}, {high}]')


def _positive(field, value):
  if int(value) <= 0:
    raise ConfigError(f'{field}={value!r} must be a positive integer')


def validate(config) -> None:
  """Raises ``ConfigError`` for the first field that is out of bounds."""
  _choice('data.name', config.data.name, data.DATASETS)
  _choice('data.noise.kind', config.data.noise.kind, NOISE_KINDS)
  _unit('data.noise.rate', config.data.noise.rate)
  model = config.model
  try:
    models.check_model(model.name, model.width, tuple(model.depth), model.get('dense', 0),
                       tuple(model.get('features') or ()))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if not model.get('batch_norm', True) and model.name != 'small_cnn':
    raise ConfigError(f'model.batch_norm=False is available for small_cnn only, not '
                      f'{model.name!r}')
  _choice('model.compute_dtype', model.get('compute_dtype', 'float32'), tuple(models.COMPUTE_DTYPES))
  _choice('objective.name', config.objective.name, objectives.OBJECTIVES)
  _unit('objective.ls_eps', config.objective.ls_eps)
  _unit('objective.te_momentum', config.objective.te_momentum)
  if config.objective.beta < 0:
    raise ConfigError(f'objective.beta={config.objective.beta!r} must be >= 0')
  _validate_awp_kd(config.objective, config.train.epochs)
  for f in ('attack', 'eval'):
    sub = config[f]
    norm = sub.get('norm', 'Linf')
    _choice(f'{f}.norm', norm, ATTACK_NORMS)
    if norm == 'Linf':
      _unit(f'{f}.eps', sub.eps)
    elif sub.eps < 0:  # an L2 radius may exceed 1 (e.g. 2.0 on MNIST)
      raise ConfigError(f'{f}.eps={sub.eps!r} must be >= 0')
    if sub.step_size < 0:
      raise ConfigError(f'{f}.step_size={sub.step_size!r} must be >= 0')
    if sub.steps < 0:
      raise ConfigError(f'{f}.steps={sub.steps!r} must be >= 0')
  if config.attack.steps < 1:  # every objective trains on adversarial examples
    raise ConfigError(f'attack.steps={config.attack.steps!r} must be >= 1 (the training '
                      'attack runs at least one step)')
  s = config.sglr
  _unit('sglr.alpha', s.alpha)
  _unit('sglr.momentum', s.momentum)
  _unit('sglr.lam', s.lam)
  if s.temperature <= 0:
    raise ConfigError(f'sglr.temperature={s.temperature!r} must be > 0')
  _choice('sglr.table_sharding', s.table_sharding, TABLE_LAYOUTS)
  _positive('train.epochs', config.train.epochs)
  _positive('train.batch_size', config.train.batch_size)
  _positive('eval.batch_size', config.eval.batch_size)
  if config.train.get('checkpoint_every_steps', 0) < 0:
    raise ConfigError(f'train.checkpoint_every_steps={config.train.checkpoint_every_steps!r} '
                      'must be >= 0 (0 = only at epoch ends and on SIGTERM)')
  _validate_swa(config.train)
  _choice('train.checkpoint_commit', config.train.get('checkpoint_commit', 'auto'),
          CHECKPOINT_COMMITS)
  for f in ('analysis_every_epochs', 'analysis_examples', 'hessian_probes'):
    if config.train.get(f, 0) < 0:
      raise ConfigError(f'train.{f}={config.train[f]!r} must be >= 0')
  if config.train.get('analysis_every_epochs', 0) > 0 and (
      config.train.get('analysis_examples', 512) < 1 or config.train.get('hessian_probes', 4) < 1):
    raise ConfigError('train.analysis_every_epochs > 0 needs train.analysis_examples >= 1 and '
                      'train.hessian_probes >= 1')
  if s.enabled and not 0 <= s.start_epoch < config.train.epochs:
    raise ConfigError(f'sglr.start_epoch={s.start_epoch!r} must lie in [0, train.epochs - 1 = '
                      f'{config.train.epochs - 1}] (0-based index of the first refined epoch)')
  if s.enabled and objectives.REGISTRY[config.objective.name].update_rows is not None:
    allowed = [n for n, o in objectives.REGISTRY.items() if o.update_rows is None]
    raise ConfigError(f'sglr.enabled=True cannot be combined with objective.name='
                      f'{config.objective.name!r} (both use the per-example table); allowed '
                      f'objectives: {", ".join(allowed)}')
  _choice('schedule.name', config.schedule.name, SCHEDULES)
  for e in config.schedule.decay_epochs:
    if not 0 < int(e) <= config.train.epochs:
      raise ConfigError(f'schedule.decay_epochs contains {e!r}; each must lie in '
                        f'[1, train.epochs = {config.train.epochs}]')
  _unit('optim.momentum', config.optim.momentum)
  if config.optim.lr <= 0:
    raise ConfigError(f'optim.lr={config.optim.lr!r} must be > 0')
  for m in config.eval.suite:
    _choice('eval.suite entry', m, EVAL_METRICS)
  _choice('eval.autoattack_budget', config.eval.get('autoattack_budget', 'standard'),
          tuple(BUDGETS))
  _choice('eval.autoattack_version', config.eval.get('autoattack_version', 'standard'),
          AUTOATTACK_VERSIONS)
  _choice('eval.precision', config.eval.get('precision', 'float32'), EVAL_PRECISIONS)
  if 'transfer' in config.eval.suite and not config.eval.transfer_from:
    raise ConfigError("eval.suite has 'transfer' but eval.transfer_from is empty; "
                      'set it to the source model\'s workdir')


def _validate_awp_kd(o, epochs: int) -> None:
  """AWP and KD's fields (absent from configs written before them: off)."""
  if o.get('awp_gamma', 0.0) < 0:
    raise ConfigError(f'objective.awp_gamma={o.awp_gamma!r} must be >= 0 (0 = no AWP)')
  if o.get('awp_gamma', 0.0) > 0 and not 0 <= o.get('awp_warmup_epochs', 0) < epochs:
    raise ConfigError(f'objective.awp_warmup_epochs={o.awp_warmup_epochs!r} must lie in '
                      f'[0, train.epochs - 1 = {epochs - 1}]')
  if o.name != 'kd':
    return
  if o.get('kd_temperature', 2.0) <= 0:
    raise ConfigError(f'objective.kd_temperature={o.kd_temperature!r} must be > 0')
  for f in ('kd_ce_weight', 'kd_weight', 'kd_std_weight'):
    if o.get(f, 0.0) < 0:
      raise ConfigError(f'objective.{f}={o[f]!r} must be >= 0')
  if not o.get('teacher_workdir', ''):
    raise ConfigError("objective.name='kd' needs objective.teacher_workdir (the workdir of "
                      'a trained robust teacher, e.g. a PGD-AT run)')
  if o.get('kd_std_weight', 0.0) > 0 and not o.get('std_teacher_workdir', ''):
    raise ConfigError(f'objective.kd_std_weight={o.kd_std_weight!r} needs '
                      "objective.std_teacher_workdir; set the weight to 0 for no standard teacher")


def _validate_swa(t) -> None:
  start = t.get('swa_start_epoch', -1)
  if not -1 <= start < t.epochs:
    raise ConfigError(f'train.swa_start_epoch={start!r} must lie in [-1, train.epochs - 1 = '
                      f'{t.epochs - 1}] (-1 = no SWA; else the 0-based first averaged epoch)')
  if t.get('swa_every_steps', 0) < 0:
    raise ConfigError(f'train.swa_every_steps={t.swa_every_steps!r} must be >= 0 '
                      '(0 = a snapshot at every epoch end)')
