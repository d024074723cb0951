"""Config validation: one clear line naming the field and the allowed values.

Runs before anything touches the workdir, so a bad config damages nothing.
"""
from __future__ import annotations

from sglr_jax import data, host_devices, models, objectives, parallel

EVAL_METRICS = ('natural', 'pgd20', 'autoattack', 'ece', 'transfer')


class ConfigError(ValueError):
  """A config field holds a value that is not allowed."""


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
  _choice('data.noise.kind', config.data.noise.kind, ('none', 'symmetric', 'asymmetric'))
  _unit('data.noise.rate', config.data.noise.rate)
  _choice('model.name', config.model.name, models.MODEL_NAMES)
  for field, unset in (('dense', '0'), ('features', '()')):
    if config.model.get(field) and config.model.name != 'small_cnn':
      raise ConfigError(f'model.{field}={config.model[field]!r} applies to small_cnn only '
                        f'(model.name={config.model.name!r}); set it to {unset}')
  features = tuple(config.model.get('features') or ())
  if not all(isinstance(f, int) and f > 0 for f in features):
    raise ConfigError(f'model.features={features!r}: positive integers, one per conv layer')
  if features and config.model.width:
    raise ConfigError('model.features and model.width both set the conv widths; set one '
                      '(model.width=0 or model.features=())')
  _choice('objective.name', config.objective.name, objectives.OBJECTIVES)
  _unit('objective.ls_eps', config.objective.ls_eps)
  _unit('objective.te_momentum', config.objective.te_momentum)
  if config.objective.beta < 0:
    raise ConfigError(f'objective.beta={config.objective.beta!r} must be >= 0')
  for f in ('attack', 'eval'):
    sub = config[f]
    _unit(f'{f}.eps', sub.eps)
    if sub.step_size < 0:
      raise ConfigError(f'{f}.step_size={sub.step_size!r} must be >= 0')
    if sub.steps < 0:
      raise ConfigError(f'{f}.steps={sub.steps!r} must be >= 0')
  s = config.sglr
  _unit('sglr.alpha', s.alpha)
  _unit('sglr.momentum', s.momentum)
  _unit('sglr.lam', s.lam)
  if s.temperature <= 0:
    raise ConfigError(f'sglr.temperature={s.temperature!r} must be > 0')
  _choice('sglr.table_sharding', s.table_sharding, parallel.TABLE_LAYOUTS)
  _choice('parallel.cpu_convs', config.parallel.get('cpu_convs', 'auto'),
          host_devices.CPU_CONVS)
  _positive('train.epochs', config.train.epochs)
  _positive('train.batch_size', config.train.batch_size)
  _positive('eval.batch_size', config.eval.batch_size)
  if config.train.get('checkpoint_every_steps', 0) < 0:
    raise ConfigError(f'train.checkpoint_every_steps={config.train.checkpoint_every_steps!r} '
                      'must be >= 0 (0 = only at epoch ends and on SIGTERM)')
  if s.enabled and not 0 <= s.start_epoch < config.train.epochs:
    raise ConfigError(f'sglr.start_epoch={s.start_epoch!r} must lie in [0, train.epochs - 1 = '
                      f'{config.train.epochs - 1}] (0-based index of the first refined epoch)')
  if s.enabled and config.objective.name == 'te':
    raise ConfigError("sglr.enabled=True cannot be combined with objective.name='te' "
                      '(both use the per-example table); allowed objectives: at, ls, trades')
  _choice('schedule.name', config.schedule.name, ('piecewise', 'cosine'))
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
          ('standard', 'smoke'))
  if 'transfer' in config.eval.suite and not config.eval.transfer_from:
    raise ConfigError("eval.suite has 'transfer' but eval.transfer_from is empty; "
                      'set it to the source model\'s workdir')
