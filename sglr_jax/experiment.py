"""``build(config) -> Experiment``: the one place that reads the config.

Every other module takes plain typed parameters; this one turns the ConfigDict into
them, loads the data, makes the mesh and the model, and picks the platform's parts:
on XLA:CPU the convolution / pooling of the small CNN, the attack loop that keeps
convolutions canonical and the compiler options of the one-off initialisation
(``sglr_jax.platforms.xla_cpu.parts``); elsewhere the core's defaults. Training and
evaluation both start from an ``Experiment``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from sglr_jax import checkpoints, config_validation, data, distributed, errors, mesh as mesh_lib
from sglr_jax import models, objectives, sglr_table, storage
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps
from sglr_jax.training import awp as awp_lib, state as state_lib, step as step_lib
from sglr_jax.training import swa as swa_lib


@dataclasses.dataclass(frozen=True)
class TrainParams:
  """The config's ``train`` section."""
  epochs: int
  batch_size: int  # global: split over devices and processes
  halt_after_epoch: int = 0  # stop (resumable) after this epoch; 0 = never
  checkpoint_every_steps: int = 0  # also save ``latest`` every N steps; 0 = epoch ends only
  train_fit_every_epochs: int = 1  # clean / noisy-label fit of the train set; 0 = never
  swa_start_epoch: int = -1  # first epoch (0-based) whose weights are averaged; -1 = no SWA
  swa_every_steps: int = 0  # steps between SWA snapshots; 0 = at every epoch end
  checkpoint_commit: str = 'auto'  # Orbax's commit: 'auto', 'rename', 'commit_file'


@dataclasses.dataclass(frozen=True)
class EvalParams:
  """The config's ``eval`` section: the per-epoch test and ``--mode=eval``."""
  eps: float
  step_size: float
  steps: int
  batch_size: int
  every_epochs: int
  seed: int
  num_examples: int  # --mode=eval: the first N test points (0 = all)
  suite: tuple[str, ...]
  autoattack_examples: int
  autoattack_budget: str
  transfer_from: str
  norm: str = 'Linf'  # threat model of every test attack: 'Linf' or 'L2'
  autoattack_version: str = 'standard'  # 'standard' or 'rand' (EOT for randomised models)
  precision: str = 'float32'  # jax.default_matmul_precision of every test attack; 'default'


@dataclasses.dataclass
class Experiment:
  """What training and evaluation build from a config."""
  config: Any  # the ConfigDict: only to write config.json
  ds: data.Dataset
  mesh: Any  # jax.sharding.Mesh over ('data',)
  model: Any  # flax.linen.Module, in the training compute dtype
  eval_model: Any  # the same module computing in float32: every evaluation uses it
  step: step_lib.StepConfig
  train: TrainParams
  optim: state_lib.OptimParams
  schedule: state_lib.ScheduleParams
  eval: EvalParams
  attack_ops: AttackOps
  steps_per_epoch: int
  seed: int
  init_options: Optional[dict] = None  # compiler options of the parameter initialisation
  teacher_workdirs: tuple[str, ...] = ()  # KD: robust teacher, then the standard one if any


class PlatformParts(NamedTuple):
  model_parts: dict  # create_model keyword arguments (conv=, pool=)
  attack_ops: AttackOps
  init_options: Optional[dict]


def platform_parts(model_name: str) -> PlatformParts:
  """The platform's versions of the injectable parts (XLA:CPU), or the core's defaults."""
  if jax.default_backend() != 'cpu':
    return PlatformParts({}, DEFAULT_OPS, None)
  from sglr_jax.platforms.xla_cpu import parts  # pylint: disable=g-import-not-at-top
  return PlatformParts(parts.model_parts(model_name), parts.attack_ops(),
                       parts.init_compiler_options())


# ------------------------------------------------------------------ config -> params

def data_params(config) -> data.DataParams:
  d = config.data
  return data.DataParams(
      name=str(d.name), data_dir=str(d.data_dir), augment=bool(d.augment),
      train_size=int(d.train_size), test_size=int(d.test_size), noise_kind=str(d.noise.kind),
      noise_rate=float(d.noise.rate), noise_seed=int(d.noise.seed))


def objective_params(config) -> objectives.ObjectiveParams:
  o, a = config.objective, config.attack
  return objectives.ObjectiveParams(
      name=o.name, eps=float(a.eps), step_size=float(a.step_size), steps=int(a.steps),
      beta=float(o.beta), ls_eps=float(o.ls_eps), te_weight=float(o.te_weight),
      te_momentum=float(o.te_momentum), te_rampup_epochs=int(o.te_rampup_epochs),
      norm=str(a.get('norm', 'Linf')), kd_temperature=float(o.get('kd_temperature', 2.0)),
      kd_ce_weight=float(o.get('kd_ce_weight', 0.3)), kd_weight=float(o.get('kd_weight', 0.6)),
      kd_std_weight=float(o.get('kd_std_weight', 0.1)))


def awp_params(config) -> Optional[awp_lib.AWPParams]:
  """None when AWP is off (``objective.awp_gamma`` 0; configs written before it: off)."""
  o = config.objective
  gamma = float(o.get('awp_gamma', 0.0))
  if gamma <= 0:
    return None
  return awp_lib.AWPParams(gamma=gamma, warmup_epochs=int(o.get('awp_warmup_epochs', 0)))


def swa_params(config, steps_per_epoch: int) -> Optional[swa_lib.SWAParams]:
  """None when SWA is off (``train.swa_start_epoch`` -1; configs written before it: off)."""
  t = config.train
  start = int(t.get('swa_start_epoch', -1))
  if start < 0:
    return None
  every = int(t.get('swa_every_steps', 0) or 0) or steps_per_epoch
  return swa_lib.SWAParams(start_step=start * steps_per_epoch, every_steps=every)


def sglr_params(config) -> Optional[sglr_table.SGLRParams]:
  """None when SGLR is off."""
  s = config.sglr
  if not s.enabled:
    return None
  return sglr_table.SGLRParams(
      momentum=float(s.momentum), lam=float(s.lam), temperature=float(s.temperature),
      alpha=float(s.alpha), start_epoch=int(s.start_epoch))


def step_config(config, num_classes: int, steps_per_epoch: int = 1) -> step_lib.StepConfig:
  """``steps_per_epoch``: converts SWA's epoch settings into steps."""
  return step_lib.StepConfig(objective_params(config), sglr_params(config), num_classes,
                             bool(config.data.augment), config.sglr.table_sharding,
                             awp=awp_params(config), swa=swa_params(config, steps_per_epoch))


def optim_params(config) -> state_lib.OptimParams:
  o = config.optim
  return state_lib.OptimParams(lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)


def schedule_params(config) -> state_lib.ScheduleParams:
  s = config.schedule
  return state_lib.ScheduleParams(name=s.name, decay_epochs=tuple(int(e) for e in s.decay_epochs),
                                  decay_factor=s.decay_factor, epochs=int(config.train.epochs))


def train_params(config) -> TrainParams:
  t = config.train
  return TrainParams(
      epochs=int(t.epochs), batch_size=int(t.batch_size),
      halt_after_epoch=int(t.halt_after_epoch or 0),
      checkpoint_every_steps=int(t.get('checkpoint_every_steps', 0) or 0),
      train_fit_every_epochs=int(t.train_fit_every_epochs or 0),
      swa_start_epoch=int(t.get('swa_start_epoch', -1)),
      swa_every_steps=int(t.get('swa_every_steps', 0) or 0),
      checkpoint_commit=str(t.get('checkpoint_commit', 'auto')))


def eval_params(config) -> EvalParams:
  e = config.eval
  return EvalParams(
      eps=float(e.eps), step_size=float(e.step_size), steps=int(e.steps),
      batch_size=int(e.batch_size), every_epochs=int(e.every_epochs or 0), seed=int(e.seed),
      num_examples=int(e.num_examples or 0), suite=tuple(e.suite),
      autoattack_examples=int(e.autoattack_examples or 0),
      autoattack_budget=str(e.get('autoattack_budget', 'standard')),
      transfer_from=str(e.transfer_from or ''), norm=str(e.get('norm', 'Linf')),
      autoattack_version=str(e.get('autoattack_version', 'standard')),
      precision=str(e.get('precision', 'float32')))


@contextlib.contextmanager
def eval_precision(ev: EvalParams):
  """Every evaluation runs inside this: float32 matmuls / convolutions unless
  ``eval.precision='default'`` (TPUs default to bfloat16 passes, recent GPUs to TF32, and
  an attack on a rounded image can over-state robustness). Set process-wide, not
  thread-locally, so the threads that compile AutoAttack's programs ahead of time see it;
  the previous value is restored on exit."""
  if ev.precision == 'default':
    yield
    return
  before = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', ev.precision)
  try:
    yield
  finally:
    jax.config.update('jax_default_matmul_precision', before)


def model_kwargs(config) -> dict:
  """``models.create_model`` arguments of the config's ``model`` section (no platform parts)."""
  m = config.model
  kwargs = {'width': m.width, 'depth': tuple(m.depth),
            'dtype': models.compute_dtype(str(m.get('compute_dtype', 'float32')))}
  if m.get('dense'):
    kwargs['dense'] = int(m.dense)
  if m.get('features'):
    kwargs['features'] = tuple(int(f) for f in m.features)
  if not m.get('batch_norm', True):
    kwargs['batch_norm'] = False
  return kwargs


def distributed_params(config) -> distributed.DistributedParams:
  d = config.distributed
  ids = str(d.local_device_ids or '')
  return distributed.DistributedParams(
      enabled=str(d.enabled), coordinator_address=str(d.coordinator_address or ''),
      num_processes=int(d.num_processes or 0), process_id=int(d.process_id),
      local_device_ids=tuple(int(i) for i in ids.split(',')) if ids else ())


# ----------------------------------------------------------------------------- build

def build(config, ds: Optional[data.Dataset] = None) -> Experiment:
  """Validates ``config`` and builds everything a run needs from it (no state yet).

  ``ds``: a dataset to use instead of loading the config's (synthetic data for
  benchmarks, say); the config's ``data`` section then only sets ``augment``.
  """
  config_validation.validate(config)
  ds = data.load(data_params(config)) if ds is None else ds
  mesh = mesh_lib.make_mesh(config.parallel.num_devices)
  train, ev = train_params(config), eval_params(config)
  mesh_lib.check_batch_size(train.batch_size, mesh, 'train.batch_size')
  # padded and masked by every evaluator: any device count works
  ev = dataclasses.replace(ev, batch_size=mesh_lib.eval_batch_size(ev.batch_size, mesh))
  n = len(ds.train_labels)
  if n < train.batch_size:
    raise errors.ConfigError(
        f'train.batch_size={train.batch_size} exceeds the {n} training examples')
  parts = platform_parts(config.model.name)
  model = models.create_model(config.model.name, ds.num_classes, bn_axis_name=mesh_lib.AXIS,
                              **model_kwargs(config), **parts.model_parts)
  spe = data.steps_per_epoch(n, train.batch_size)
  return Experiment(
      config=config, ds=ds, mesh=mesh, model=model, eval_model=float32_model(model),
      step=step_config(config, ds.num_classes, spe),
      train=train, optim=optim_params(config), schedule=schedule_params(config), eval=ev,
      attack_ops=parts.attack_ops, steps_per_epoch=spe,
      seed=int(config.seed), init_options=parts.init_options,
      teacher_workdirs=teacher_workdirs(config))


def float32_model(model):
  """``model`` computing in float32 (the same variables; itself when already float32)."""
  return model if model.dtype == jnp.float32 else model.clone(dtype=jnp.float32)


def _create_state(exp: Experiment, compiler_options) -> state_lib.TrainState:
  tx, _ = state_lib.create_optimizer(exp.optim, exp.schedule, exp.steps_per_epoch)
  labels = exp.ds.train_labels
  return state_lib.create_train_state(
      exp.model, tx, exp.ds.image_shape, labels, exp.ds.num_classes,
      jax.random.PRNGKey(exp.seed), table_rows=mesh_lib.table_rows(len(labels), exp.mesh),
      compiler_options=compiler_options, swa=exp.step.swa is not None)


def initial_state(exp: Experiment) -> state_lib.TrainState:
  """A fresh state from ``PRNGKey(seed)``, placed on the mesh."""
  st = _create_state(exp, exp.init_options)
  return jax.device_put(st, mesh_lib.state_shardings(st, exp.mesh, exp.step.table_layout))


def abstract_state(exp: Experiment) -> state_lib.TrainState:
  """The state's shapes, dtypes and shardings (``jax.ShapeDtypeStruct`` leaves), traced
  with ``jax.eval_shape``: a restore target that initialises and allocates nothing
  (compiler options belong to top-level programs only: none here)."""
  shapes = jax.eval_shape(lambda: _create_state(exp, None))
  shardings = mesh_lib.state_shardings(shapes, exp.mesh, exp.step.table_layout)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def restore(exp: Experiment, workdir: str, kind: str):
  """``(state, key)`` of the newest readable checkpoint ``kind`` ('best', 'final',
  'latest'); ``key`` is the epoch (best, final) or the step (latest).

  Read-only (evaluation must not change a workdir): a damaged checkpoint stays where it
  is and, when none of ``kind`` is readable, the error names it as damaged.
  """
  target = abstract_state(exp)
  damaged = []
  got = checkpoints.restore(workdir, kind, target, jax.tree.map(lambda x: x.sharding, target),
                            read_only=True, damaged=damaged,
                            commit=exp.train.checkpoint_commit)
  if got is None and damaged:
    key, reason = damaged[0]
    raise errors.NoCheckpointError(
        f'checkpoint {kind}/{key} in {workdir} is damaged ({reason}); it was left as it is. '
        f'Restore it from a copy, or re-train (--mode=train falls back to an earlier one)')
  if got is None:
    raise errors.NoCheckpointError(
        f'{workdir} has no {kind!r} checkpoint (looked in '
        f'{storage.join(workdir, "checkpoints", kind)}); train first with --mode=train, or '
        'point --workdir at a trained run')
  return got


def variables_of(st) -> dict:
  """The variables every evaluation uses: the SWA average (with its recomputed BatchNorm
  statistics) once it holds a snapshot, else the trained weights."""
  if st.swa_count is not None and int(st.swa_count) > 0:
    return {'params': st.swa_params, 'batch_stats': st.swa_batch_stats}
  return {'params': st.params, 'batch_stats': st.batch_stats}


# ------------------------------------------------------------------------ teachers

TEACHER_FIELDS = ('objective.teacher_workdir', 'objective.std_teacher_workdir')
# Which checkpoint of a teacher distils: the robust teacher's best test PGD-20 accuracy
# (the reference's robust-accuracy best); the standard teacher's final weights (runs
# select 'best' by robust accuracy, meaningless for a standard model).
TEACHER_KINDS = ('best', 'final')


def teacher_workdirs(config) -> tuple[str, ...]:
  """KD's teacher workdirs (robust first), () for other objectives."""
  o = config.objective
  if o.name != 'kd':
    return ()
  std = str(o.get('std_teacher_workdir', '') or '')
  return (str(o.get('teacher_workdir', '') or ''),) + ((std,) if std else ())


def load_teachers(exp: Experiment) -> tuple:
  """KD's teachers as ``(model, variables)`` pairs, variables replicated on ``exp.mesh``.

  Each teacher is rebuilt from its own ``config.json`` (any model of ours) and restored
  read-only; one that is missing or was trained on another dataset is a ``UserError``
  naming the field, raised before anything is written.
  """
  out = []
  for field, kind, wd in zip(TEACHER_FIELDS, TEACHER_KINDS, exp.teacher_workdirs):
    try:
      tc = load_workdir_config(wd)
      if str(tc.data.name) != str(exp.config.data.name):
        raise errors.ConfigError(
            f'was trained on data.name={tc.data.name!r}; this run trains on '
            f'{exp.config.data.name!r} (a teacher must share the classes and image shape)')
      tc.parallel.num_devices = int(exp.mesh.devices.size)
      texp = build(tc, ds=exp.ds)
      st, _ = restore(texp, wd, kind)
    except errors.UserError as e:
      raise type(e)(f'{field}={wd!r}: {e}') from e
    out.append((texp.model, variables_of(st)))
  return tuple(out)


def load_workdir_config(workdir: str):
  """The resolved config a run wrote into its workdir (lists back to tuples)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = storage.join(workdir, 'config.json')
  if not storage.exists(path):
    raise errors.NoCheckpointError(f'{workdir} has no config.json: not a sglr_jax workdir')
  d = json.loads(storage.read_text(path))
  return ml_collections.ConfigDict(_tuples(d))


def _tuples(d):
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d
