"""``train_and_evaluate(config, workdir)``: the training loop around the pure step.

Per epoch: train (progress bar), test natural + PGD-20 accuracy, optionally the fit
of the training labels (memorisation under label noise), one line of
``history.jsonl``, then the ``latest`` checkpoint (and ``best`` when the test PGD-20
accuracy improved). The last epoch is also saved as ``final``. Re-running on a
workdir resumes from the newest readable ``latest`` checkpoint.

SIGTERM (preemption) saves ``latest`` at the next step boundary, mid-epoch, with
the unfinished epoch's per-step metric sums, and returns; the resumed run starts
inside that epoch (``state.step`` says where) and logs the same history as an
uninterrupted one. ``train.checkpoint_every_steps`` (if set) also saves ``latest``
every that many steps, for crashes. See the README, "Several GPUs, a TPU pod, SLURM".
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from sglr_jax import checkpoints, config_check, data, metrics, models, parallel, state as state_lib
from sglr_jax import steps as steps_lib


@dataclasses.dataclass
class Setup:
  """What both training and evaluation build from a config."""
  config: object
  ds: data.Dataset
  mesh: object
  model: object
  step_config: steps_lib.StepConfig
  steps_per_epoch: int


def build_model(config, num_classes):
  extra = {'dense': int(config.model.dense)} if config.model.get('dense') else {}
  if config.model.get('features'):
    extra['features'] = tuple(int(f) for f in config.model.features)
  return models.create_model(config.model.name, num_classes, width=config.model.width,
                             depth=tuple(config.model.depth), bn_axis_name=parallel.AXIS, **extra)


def build(config) -> Setup:
  config_check.validate(config)
  ds = data.load(config)
  mesh = parallel.make_mesh(config.parallel.num_devices)
  parallel.check_batch_size(config.train.batch_size, mesh, 'train.batch_size')
  parallel.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  n = len(ds.train_labels)
  if n < config.train.batch_size:
    raise config_check.ConfigError(
        f'train.batch_size={config.train.batch_size} exceeds the {n} training examples')
  model = build_model(config, ds.num_classes)
  sc = steps_lib.step_config(config, ds.num_classes)
  return Setup(config, ds, mesh, model, sc, data.steps_per_epoch(n, config.train.batch_size))


def initial_state(s: Setup):
  """A fresh state, placed on the mesh."""
  c = s.config
  st = state_lib.create_train_state(
      c, s.model, s.ds.image_shape, s.ds.train_labels, s.ds.num_classes, s.steps_per_epoch,
      jax.random.PRNGKey(c.seed), table_rows=parallel.table_rows(len(s.ds.train_labels), s.mesh))
  return jax.device_put(st, parallel.state_shardings(st, s.mesh, s.step_config.table_layout))


def predict(eval_step, variables, images, labels, batch_size, mesh, key):
  """Clean and adversarial logits ``[M, K]`` for all of ``images`` (on every host)."""
  clean, adv = [], []
  for batch in data.eval_batches(images, labels, batch_size, jax.process_index(),
                                 jax.process_count()):
    batch.pop('mask')  # the padding rows are cut off below ([:n])
    c, a = eval_step(variables, parallel.to_global(batch, mesh), key)
    clean.append(_host(c))
    adv.append(_host(a))
  n = len(labels)
  return np.concatenate(clean)[:n], np.concatenate(adv)[:n]


def _host(x):
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def variables_of(st):
  return {'params': st.params, 'batch_stats': st.batch_stats}


class _Preemption:
  """SIGTERM asks the loop to checkpoint at the next step boundary and exit.

  One process: a Python SIGTERM handler sets a flag, read after every step.
  Under ``jax.distributed`` JAX's preemption service owns SIGTERM (it is installed
  by ``jax.distributed.initialize`` and tells every process of a notice that any
  of them got); ``reached_preemption_sync_point(step)`` then turns True on all
  processes at the same step, so they save the same checkpoint. No Python handler
  is installed in that case: it would replace JAX's. Without the service (it is
  on by default), processes agree on a stop only at the end of an epoch.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._sync = False

  def __enter__(self):
    multi = jax.process_count() > 1 or jax.distributed.is_initialized()
    self._sync = multi and bool(jax.config.jax_enable_preemption_service)
    if not self._sync:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread
        self._previous = None
    return self

  def _handle(self, *_):
    self.requested = True

  def check(self, step: int) -> bool:
    """Called after every train step with the number of steps done (all processes)."""
    if self._sync and not self.requested:
      self.requested = bool(multihost_utils.reached_preemption_sync_point(step))
    if jax.process_count() > 1 and not self._sync:
      return False  # the processes could disagree; see at_epoch_end
    return self.requested

  def at_epoch_end(self) -> bool:
    if jax.process_count() > 1 and not self._sync:
      flags = multihost_utils.process_allgather(np.asarray([int(self.requested)], np.int32))
      self.requested = bool(np.any(np.asarray(flags)))
    return self.requested

  def __exit__(self, *_):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _progress(epoch: int, sums: list, spe: int, train_time_s: float) -> dict:
  """What a checkpoint holds besides the state: the running epoch (0-based), the
  steps done in it and their metric sums (exact: JSON floats round-trip)."""
  return {'version': 1, 'epoch': epoch, 'step_in_epoch': len(sums), 'steps_per_epoch': spe,
          'train_time_s': round(float(train_time_s), 3),
          'metrics': [{k: float(v) for k, v in m.items()} for m in sums]}


def _resume(workdir: str, st, shardings, spe: int):
  """The newest readable ``latest`` checkpoint (or ``st``) and, when it was taken
  inside an epoch, that epoch's saved per-step metrics and train time."""
  got = checkpoints.restore(workdir, 'latest', st, shardings, with_progress=True)
  if got is None:
    return st, [], 0.0
  st, key, prog = got
  epoch, step = int(st.epoch), int(st.step)
  k = step - epoch * spe
  if jax.process_index() == 0:
    logging.warning('resuming from checkpoint latest/%d: epoch %d, step %d of %d', key,
                    epoch + 1, k, spe)
  if k == 0:
    return st, [], 0.0
  if not 0 < k < spe:
    raise config_check.ConfigError(
        f'the latest checkpoint is at step {step} in epoch {epoch + 1}, which does not fit '
        f'{spe} steps per epoch; were train.batch_size or data.train_size changed? '
        'Use a fresh --workdir for a different setup')
  if not prog or prog.get('epoch') != epoch or len(prog.get('metrics', ())) != k:
    logging.warning('checkpoint latest/%d has no metrics of the %d finished steps of epoch %d; '
                    "that epoch's train metrics will cover the remaining steps only", key, k,
                    epoch + 1)
    return st, [], 0.0
  return st, list(prog['metrics']), float(prog.get('train_time_s', 0.0))


def write_config(config, workdir: str):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def improves(value, best_metric) -> bool:
  """Whether an epoch's test PGD-20 accuracy beats the stored best (a float32 scalar).

  Compared in float32, as stored: in float64, 0.923 > float32(0.923) and every later
  tie would replace the best checkpoint; ties keep the first best epoch, as the report's
  curves mark it. ``value`` is None for epochs without an evaluation.
  """
  return value is not None and bool(np.float32(value) > np.float32(best_metric))


def train_and_evaluate(config, workdir: str, progress: bool = True) -> list[dict]:
  """Trains (resuming if possible) and returns the history."""
  s = build(config)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  is_main = jax.process_index() == 0
  c = config
  spe = s.steps_per_epoch
  parallel.sync_processes('sglr_train_start')
  st = initial_state(s)
  shardings = parallel.state_shardings(st, s.mesh, s.step_config.table_layout)
  st, partial_sums, partial_time = _resume(workdir, st, shardings, spe)
  done = int(st.epoch)
  step = int(st.step)  # optimizer steps so far; the key of 'latest' checkpoints
  if is_main:
    metrics.truncate_history(workdir, done)

  train_step = steps_lib.make_train_step(s.model, s.step_config, s.mesh, st)
  eval_step = steps_lib.make_eval_step(s.model, s.mesh, eps=c.eval.eps,
                                       step_size=c.eval.step_size, steps=c.eval.steps)
  fit_step = steps_lib.make_eval_step(s.model, s.mesh, eps=0.0, step_size=0.0, steps=0)
  _, schedule = state_lib.create_optimizer(c, s.steps_per_epoch)
  eval_key = jax.random.PRNGKey(c.eval.seed)
  halt = c.train.halt_after_epoch
  every = int(c.train.get('checkpoint_every_steps', 0) or 0)
  with _Preemption() as preempt:
    for epoch in range(done, c.train.epochs):
      first = step - epoch * spe  # > 0 only when resuming inside this epoch
      t0 = time.time() - partial_time
      sums, partial_sums, partial_time = partial_sums, [], 0.0
      batches = data.train_batches(s.ds, c.seed, epoch, c.train.batch_size,
                                   jax.process_index(), jax.process_count(), start_step=first)
      bar = tqdm(batches, total=spe, initial=first, desc=f'epoch {epoch + 1}/{c.train.epochs}',
                 disable=not (progress and is_main), leave=False)
      stopped = False
      for batch in bar:
        st, m = train_step(st, parallel.to_global(batch, s.mesh))
        sums.append(m)
        step += 1
        stop = preempt.check(step)  # every step: the multi-process sync protocol needs it
        if step < (epoch + 1) * spe and (stop or (every and step % every == 0)):
          sums = jax.device_get(sums)
          checkpoints.save(workdir, 'latest', st, step,
                           _progress(epoch, sums, spe, time.time() - t0))
          if stop:
            stopped = True
            break
      bar.close()
      if stopped:
        if is_main:
          logging.warning('SIGTERM: saved checkpoint latest/%d (epoch %d, step %d of %d); '
                          'run the same command again to resume', step, epoch + 1,
                          step - epoch * spe, spe)
        break
      sums = jax.device_get(sums)
      # Same shardings as before, so the next epoch's step does not recompile.
      st = jax.device_put(st.replace(epoch=st.epoch + 1), shardings)
      record = _epoch_record(epoch, sums, float(schedule(epoch * s.steps_per_epoch)))
      record['train_time_s'] = round(time.time() - t0, 2)
      if c.eval.every_epochs and ((epoch + 1) % c.eval.every_epochs == 0
                                  or epoch + 1 == c.train.epochs):
        clean, adv = predict(eval_step, variables_of(st), s.ds.test_images, s.ds.test_labels,
                             c.eval.batch_size, s.mesh, eval_key)
        record['test_natural_acc'] = metrics.masked_accuracy(clean, s.ds.test_labels)
        record['test_pgd20_acc'] = metrics.masked_accuracy(adv, s.ds.test_labels)
      if c.train.train_fit_every_epochs and (epoch + 1) % c.train.train_fit_every_epochs == 0:
        record.update(_train_fit(fit_step, st, s, eval_key))
      record['epoch_time_s'] = round(time.time() - t0, 2)
      improved = improves(record.get('test_pgd20_acc'), st.best_metric)
      if improved:
        st = jax.device_put(
            st.replace(best_metric=jnp.asarray(record['test_pgd20_acc'], jnp.float32)), shardings)
      if is_main:
        metrics.append_history(workdir, record)
        if progress:
          tqdm.write(_summary(record))
      if improved:
        checkpoints.save(workdir, 'best', st, epoch + 1)
      checkpoints.save(workdir, 'latest', st, step, _progress(epoch + 1, [], spe, 0.0))
      if epoch + 1 == c.train.epochs:
        checkpoints.save(workdir, 'final', st, epoch + 1)
      if preempt.at_epoch_end() or (halt and epoch + 1 >= halt):
        if is_main:
          logging.warning('stopping after epoch %d (%s)', epoch + 1,
                          'SIGTERM' if preempt.requested else 'train.halt_after_epoch')
        break
  return metrics.read_history(workdir)


def _epoch_record(epoch, sums, lr) -> dict:
  count = sum(float(m['count']) for m in sums)
  return {
      'epoch': epoch + 1,
      'lr': lr,
      'train_loss': sum(float(m['loss_sum']) for m in sums) / count,
      'train_adv_acc': sum(float(m['adv_correct']) for m in sums) / count,
      'grad_norm': float(np.mean([float(m['grad_norm']) for m in sums])),
  }


def _train_fit(fit_step, st, s: Setup, key) -> dict:
  """Clean-input fit of the training set: against the clean labels, and on the
  noisy examples against their noisy labels (memorisation)."""
  logits, _ = predict(fit_step, variables_of(st), s.ds.train_images, s.ds.train_labels,
                      s.config.eval.batch_size, s.mesh, key)
  out = {'train_clean_acc': metrics.masked_accuracy(logits, s.ds.train_clean_labels)}
  noisy = s.ds.noisy
  if noisy.any():
    out['train_noisy_fit'] = metrics.masked_accuracy(logits, s.ds.train_labels, noisy)
    out['train_noisy_clean_acc'] = metrics.masked_accuracy(logits, s.ds.train_clean_labels, noisy)
  return out


def _summary(r: dict) -> str:
  parts = [f"epoch {r['epoch']}", f"lr {r['lr']:.4g}", f"loss {r['train_loss']:.4f}",
           f"train adv {100 * r['train_adv_acc']:.1f}%"]
  if 'test_natural_acc' in r:
    parts += [f"test nat {100 * r['test_natural_acc']:.1f}%",
              f"PGD-{'20'} {100 * r['test_pgd20_acc']:.1f}%"]
  if 'train_noisy_fit' in r:
    parts.append(f"noisy fit {100 * r['train_noisy_fit']:.1f}%")
  parts.append(f"{r['epoch_time_s']:.1f}s")
  return ' | '.join(parts)
