"""``train_and_evaluate(config, workdir)``: the training loop around the pure step.

Per epoch: train (progress bar), test natural + PGD-20 accuracy, optionally the fit
of the training labels (memorisation under label noise) and the information in weights
and Hessian trace of the training loss (``epoch_analysis``), one line of
``history.jsonl``, then the ``latest`` checkpoint (and ``best`` when the test PGD-20
accuracy improved). The last epoch is also saved as ``final``. Re-running on a
workdir resumes from the newest readable ``latest`` checkpoint.

With SWA on (``train.swa_start_epoch``), every epoch end recomputes the average's
BatchNorm statistics, and evaluations, ``best`` and ``final`` use the average once it
holds a snapshot (``experiment.variables_of``). KD's teachers are restored before
anything is written.

SIGTERM (preemption) saves ``latest`` at the next step boundary, mid-epoch, with
the unfinished epoch's per-step metric sums, and returns; the resumed run starts
inside that epoch (``state.step`` says where) and logs the same history as an
uninterrupted one. ``train.checkpoint_every_steps`` (if set) also saves ``latest``
every that many steps, for crashes. See the README, "Several GPUs, a TPU pod, SLURM".

Nothing is written before the config, the data and a resume's checkpoint are checked;
the run holds the workdir's lock (``sglr_jax.workdir``). A non-finite loss or gradient
norm stops the run (``NonFiniteError``) before anything of the bad state is saved. A
run killed at any point after its last epoch's ``latest`` completes ``final`` when re-run.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sglr_jax import checkpoints, data, distributed, experiment, history, mesh as mesh_lib
from sglr_jax import tensorboard, workdir as workdir_lib
from sglr_jax.evaluation import metrics, predict
from sglr_jax.training import epoch_analysis, preemption, progress as progress_lib
from sglr_jax.training import state as state_lib
from sglr_jax.training import step as step_lib, summary, swa

Hook = Callable[[int], None]


class NonFiniteError(RuntimeError):
  """A train step produced a non-finite loss or gradient norm (exit status 3)."""
  exit_status = 3


def check_finite(sums: list, epoch: int, first: int) -> None:
  """Raises ``NonFiniteError`` naming the first step of ``sums`` (host metric dicts of
  epoch ``epoch``, 0-based, starting at step ``first`` of it) with a non-finite loss or
  gradient norm."""
  for i, m in enumerate(sums):
    if not (np.isfinite(float(m['loss_sum'])) and np.isfinite(float(m['grad_norm']))):
      raise NonFiniteError(
          f'non-finite loss or gradient norm at epoch {epoch + 1}, step {first + i + 1}: '
          'training diverged (likely causes: optim.lr too high, bf16 overflow, bad input '
          'data); nothing of it was saved, the last checkpoint is the resume point')


def write_config(config, workdir: str):
  if jax.process_index() == 0:
    workdir_lib.write_text(workdir, 'config.json',
                           config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def improves(value, best_metric) -> bool:
  """Whether an epoch's test PGD-20 accuracy beats the stored best (a float32 scalar).

  Compared in float32, as stored: in float64, 0.923 > float32(0.923) and every later
  tie would replace the best checkpoint; ties keep the first best epoch, as the report's
  curves mark it. ``value`` is None for epochs without an evaluation.
  """
  return value is not None and bool(np.float32(value) > np.float32(best_metric))


def _evaluations(exp: experiment.Experiment, st, epoch: int, eval_step, fit_step, key) -> dict:
  """The end-of-epoch measurements due after epoch ``epoch`` (0-based): test natural and
  PGD-20 accuracy, and the fit of the training labels."""
  with experiment.eval_precision(exp.eval):
    return _evaluate_epoch(exp, st, epoch, eval_step, fit_step, key)


def _evaluate_epoch(exp, st, epoch, eval_step, fit_step, key) -> dict:
  tp, ev, ds = exp.train, exp.eval, exp.ds
  out = {}
  if ev.every_epochs and ((epoch + 1) % ev.every_epochs == 0 or epoch + 1 == tp.epochs):
    clean, adv = predict.predict(eval_step, experiment.variables_of(st), ds.test_images,
                                 ds.test_labels, ev.batch_size, exp.mesh, key)
    out['test_natural_acc'] = metrics.masked_accuracy(clean, ds.test_labels)
    out['test_pgd20_acc'] = metrics.masked_accuracy(adv, ds.test_labels)
    # calibration over training (paper Fig. B.2): the one ECE, on the same logits
    out['test_ece_clean'] = metrics.calibration(clean, ds.test_labels)['ece']
    out['test_ece_pgd20'] = metrics.calibration(adv, ds.test_labels)['ece']
  if tp.train_fit_every_epochs and (epoch + 1) % tp.train_fit_every_epochs == 0:
    logits, _ = predict.predict(fit_step, experiment.variables_of(st), ds.train_images,
                                ds.train_labels, ev.batch_size, exp.mesh, key)
    out.update(summary.train_fit(logits, ds))
  return out


def train_and_evaluate(config, workdir: str, progress: bool = True,
                       hooks: Iterable[Hook] = ()) -> list[dict]:
  """Trains (resuming if possible) and returns the history.

  ``hooks``: callables called after every train step with the number of steps done
  (before the preemption check of that step), e.g. to report or to act at a chosen step.
  """
  exp = experiment.build(config)  # validates the config, loads the data
  teachers = experiment.load_teachers(exp)  # KD: a missing teacher fails before any write
  workdir_lib.check_writable(workdir)
  with workdir_lib.Lock(workdir):
    return _train(exp, workdir, progress, tuple(hooks), teachers)


def _swa_batch_stats(exp: experiment.Experiment, st, bn_pass, shardings):
  """``st`` with the SWA average's BatchNorm statistics recomputed on the training data
  (one pass over the epoch-0 order of the training set), when the average holds a
  snapshot."""
  if bn_pass is None or int(st.swa_count) == 0:
    return st
  batches = (mesh_lib.to_global(b, exp.mesh) for b in data.train_batches(
      exp.ds, exp.seed, 0, exp.train.batch_size, jax.process_index(), jax.process_count()))
  stats = swa.recompute_batch_stats(bn_pass, st.swa_params, st.swa_batch_stats, batches)
  return jax.device_put(st.replace(swa_batch_stats=stats), shardings)


def _train(exp: experiment.Experiment, workdir: str, progress: bool, hooks,
           teachers: tuple = ()) -> list[dict]:
  is_main = jax.process_index() == 0
  spe, tp, ev = exp.steps_per_epoch, exp.train, exp.eval
  st = experiment.initial_state(exp)
  # IIW's reference: the initial weights, taken before a resume replaces them
  analyser = epoch_analysis.EpochAnalysis.create(exp, st.params)
  shardings = mesh_lib.state_shardings(st, exp.mesh, exp.step.table_layout)
  st, partial_sums, partial_time = progress_lib.resume(workdir, st, shardings, spe, tp.epochs,
                                                       tp.checkpoint_commit)
  done = int(st.epoch)
  step = int(st.step)  # optimizer steps so far; the key of 'latest' checkpoints
  # The resume was compatible: from here on the workdir is written.
  write_config(exp.config, workdir)
  distributed.sync_processes('sglr_train_start')
  if is_main:
    history.truncate_history(workdir, done)

  train_step = step_lib.make_train_step(exp.model, exp.step, exp.mesh, st, ops=exp.attack_ops,
                                        teachers=teachers)
  bn_pass = swa.make_bn_pass(exp.model, exp.mesh) if exp.step.swa is not None else None
  eval_step = predict.make_eval_step(exp.eval_model, exp.mesh, eps=ev.eps, step_size=ev.step_size,
                                     steps=ev.steps, norm=ev.norm, ops=exp.attack_ops)
  fit_step = predict.make_eval_step(exp.eval_model, exp.mesh, eps=0.0, step_size=0.0, steps=0)
  if done >= tp.epochs and not checkpoints.committed(workdir, 'final', tp.epochs):
    # killed after the last epoch's 'latest', before or inside the save of 'final'
    logging.warning('all %d epochs are done; saving the missing final checkpoint', tp.epochs)
    checkpoints.save(workdir, 'final', st, tp.epochs, commit=tp.checkpoint_commit)
  try:
    with preemption.Preemption() as preempt, tensorboard.StepLog(
        workdir, step, tp.batch_size, enabled=is_main) as steplog:
      _epochs(exp, workdir, progress, hooks, st, step, partial_sums, partial_time, preempt,
              steplog, train_step, bn_pass, eval_step, fit_step, shardings, analyser)
  finally:
    checkpoints.wait()  # the asynchronous save of the last 'latest'
  return history.read_history(workdir)


def _save_epoch(workdir: str, st, epoch: int, step: int, improved: bool, tp, spe: int):
  """The epoch's checkpoints: 'latest' written asynchronously (the next epoch's steps
  do not wait on storage), 'best' / 'final' as links to its files once committed."""
  also = (('best', epoch + 1),) if improved else ()
  if epoch + 1 == tp.epochs:
    also += (('final', epoch + 1),)
  checkpoints.save(workdir, 'latest', st, step, progress_lib.record(epoch + 1, [], spe, 0.0),
                   asynchronous=True, also=also, commit=tp.checkpoint_commit)


def _epochs(exp, workdir, progress, hooks, st, step, partial_sums, partial_time, preempt,
            steplog, train_step, bn_pass, eval_step, fit_step, shardings, analyser=None):
  """The epochs from the resume point on (see the module docstring)."""
  is_main = jax.process_index() == 0
  spe, tp, ev = exp.steps_per_epoch, exp.train, exp.eval
  schedule = state_lib.lr_schedule(exp.optim.lr, exp.schedule, spe)
  eval_key = jax.random.PRNGKey(ev.seed)
  every = tp.checkpoint_every_steps
  for epoch in range(int(st.epoch), tp.epochs):
    first = step - epoch * spe  # > 0 only when resuming inside this epoch
    t0 = time.time() - partial_time
    sums, partial_sums, partial_time = partial_sums, [], 0.0
    batches = data.prefetch_to_mesh(
        data.train_batches(exp.ds, exp.seed, epoch, tp.batch_size, jax.process_index(),
                           jax.process_count(), start_step=first), exp.mesh, size=2)
    bar = tqdm(batches, total=spe, initial=first, desc=f'epoch {epoch + 1}/{tp.epochs}',
               disable=not (progress and is_main), leave=False)
    stopped = False
    steplog.restart()  # step times exclude the evaluation and saves before
    for batch in bar:
      st, m = train_step(st, batch)
      sums.append(m)
      step += 1
      steplog.add(step, m)  # one device sync every steplog.every steps
      for hook in hooks:
        hook(step)
      stop = preempt.check(step)  # every step: the multi-process sync protocol needs it
      if step < (epoch + 1) * spe and (stop or (every and step % every == 0)):
        sums = jax.device_get(sums)
        check_finite(sums, epoch, 0)
        checkpoints.save(workdir, 'latest', st, step,
                         progress_lib.record(epoch, sums, spe, time.time() - t0),
                         commit=tp.checkpoint_commit)
        if stop:
          stopped = True
          break
    bar.close()
    batches.close()  # stops the prefetch thread (after a SIGTERM break too)
    steplog.flush()
    if stopped:
      if is_main:
        logging.warning('SIGTERM: saved checkpoint latest/%d (epoch %d, step %d of %d); '
                        'run the same command again to resume', step, epoch + 1,
                        step - epoch * spe, spe)
      break
    sums = jax.device_get(sums)
    check_finite(sums, epoch, 0)
    # Same shardings as before, so the next epoch's step does not recompile.
    st = jax.device_put(st.replace(epoch=st.epoch + 1), shardings)
    st = _swa_batch_stats(exp, st, bn_pass, shardings)  # what evaluation and saves see
    record = summary.epoch_record(epoch, sums, float(schedule(epoch * spe)))
    record['train_time_s'] = round(time.time() - t0, 2)
    record.update(_evaluations(exp, st, epoch, eval_step, fit_step, eval_key))
    if analyser is not None:
      record.update(analyser(st, epoch + 1))
    record['epoch_time_s'] = round(time.time() - t0, 2)
    improved = improves(record.get('test_pgd20_acc'), st.best_metric)
    if improved:
      st = jax.device_put(
          st.replace(best_metric=jnp.asarray(record['test_pgd20_acc'], jnp.float32)), shardings)
    if is_main:
      history.append_history(workdir, record)
      if progress:
        tqdm.write(summary.console_line(record))
    _save_epoch(workdir, st, epoch, step, improved, tp, spe)
    if preempt.at_epoch_end() or (tp.halt_after_epoch and epoch + 1 >= tp.halt_after_epoch):
      if is_main:
        logging.warning('stopping after epoch %d (%s)', epoch + 1,
                        'SIGTERM' if preempt.requested else 'train.halt_after_epoch')
      break
