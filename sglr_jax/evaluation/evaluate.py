"""``evaluate(config, workdir)``: restore ``best`` and ``final``, run the suite, write
``results.json`` and ``results.md`` (the paper's Best / Final / Diff table).

Suite entries (``eval.suite``): natural, pgd20, autoattack (standard ensemble on
``eval.autoattack_examples`` points), ece (15 bins, clean and PGD-20 inputs),
transfer (PGD-20 crafted on ``eval.transfer_from``'s final model).
"""
from __future__ import annotations

import jax

from sglr_jax import checkpoints, errors, experiment
from sglr_jax.evaluation import autoattack, calibration, natural_pgd, results as results_lib
from sglr_jax.evaluation import transfer

KINDS = ('best', 'final')


def eval_points(ds, limit: int):
  """The first ``limit`` (0: all) test images ``[M, H, W, C]`` (uint8) and labels ``[M]``."""
  x, y = ds.test_images, ds.test_labels
  if limit:
    x, y = x[:limit], y[:limit]
  return x, y


class Suite:
  """The evaluators ``suite`` names, built once and run on each checkpoint's variables.

  Every evaluator draws from ``PRNGKey(eval.seed)``: best and final see the same PGD
  starts, so their difference is the model's, not the attack's.
  """

  def __init__(self, exp, suite, transfer_source=None, progress: bool = True,
               workdir: str = ''):
    ev = exp.eval
    self.suite = tuple(suite)
    self.x, self.y = eval_points(exp.ds, ev.num_examples)
    key = jax.random.PRNGKey(ev.seed)
    self.natural_pgd = self.autoattack = self.transfer = None
    model = exp.eval_model  # float32 whatever the training dtype
    if {'natural', 'pgd20', 'ece'} & set(self.suite):
      self.natural_pgd = natural_pgd.NaturalPGD(
          model, exp.mesh, self.x, self.y, eps=ev.eps, step_size=ev.step_size,
          steps=ev.steps, batch_size=ev.batch_size, key=key, norm=ev.norm,
          ops=exp.attack_ops)
    if 'autoattack' in self.suite:
      self.autoattack = autoattack.AutoAttack(
          model, exp.mesh, self.x, self.y, eps=ev.eps, key=key, batch_size=ev.batch_size,
          examples=ev.autoattack_examples, budget=ev.autoattack_budget, norm=ev.norm,
          version=ev.autoattack_version, ops=exp.attack_ops, progress=progress,
          workdir=workdir)
    if 'transfer' in self.suite and transfer_source is not None:
      source_model, source_variables = transfer_source
      self.transfer = transfer.Transfer(
          model, source_model, source_variables, self.x, self.y, eps=ev.eps,
          step_size=ev.step_size, steps=ev.steps, batch_size=ev.batch_size, key=key,
          norm=ev.norm, ops=exp.attack_ops)

  kind = ''  # the checkpoint being evaluated ('best', 'final'): names AutoAttack's files

  def run(self, variables, kind: str = '') -> dict:
    """The suite's metrics of one set of variables; accuracies are fractions. ``kind``
    (default ``self.kind``) names AutoAttack's state and adversarial-example files."""
    kind = kind or self.kind
    out = {'num_examples': int(len(self.y))}
    if self.natural_pgd is not None:
      clean, adv = self.natural_pgd.logits(variables)  # [M, K] each
      accs = self.natural_pgd.metrics(clean, adv)
      out['natural_acc'] = accs['natural_acc']
      if 'pgd20' in self.suite or 'ece' in self.suite:
        out['pgd20_acc'] = accs['pgd20_acc']
      if 'ece' in self.suite:
        out.update(calibration.run(clean, adv, self.y))
    if self.autoattack is not None:
      out.update(self.autoattack.run(variables, kind))
    if self.transfer is not None:
      out.update(self.transfer.run(variables))
    return out


def transfer_source(workdir: str):
  """(model, variables) of the final checkpoint of the run in ``workdir``."""
  src = experiment.build(experiment.load_workdir_config(workdir))
  state, _ = experiment.restore(src, workdir, 'final')
  return src.eval_model, experiment.variables_of(state)


def evaluate(config, workdir: str, progress: bool = True) -> dict:
  """Evaluates ``best`` and ``final`` of ``workdir``; writes results.json/.md."""
  exp = experiment.build(config)
  with experiment.eval_precision(exp.eval):
    return _evaluate(exp, workdir, progress)


def _evaluate(exp, workdir: str, progress: bool) -> dict:
  for kind in KINDS:  # both, before spending time on either
    if not checkpoints.available(workdir, kind):
      raise errors.NoCheckpointError(
          f'{workdir} has no {kind!r} checkpoint; train it to the end first '
          f'(python run.py --config=... --workdir={workdir})')
  ev = exp.eval
  suite = tuple(ev.suite)
  source = transfer_source(ev.transfer_from) if 'transfer' in suite else None
  evaluators = Suite(exp, suite, source, progress, workdir)
  results = {}
  for kind in KINDS:
    state, epoch = experiment.restore(exp, workdir, kind)
    if kind == 'final' and results['best']['epoch'] == int(epoch):
      results[kind] = dict(results['best'])  # the same checkpoint: evaluated once
      continue
    evaluators.kind = kind
    r = evaluators.run(experiment.variables_of(state))
    r['epoch'] = int(epoch)
    results[kind] = r
  results['diff'] = results_lib.diff(results['best'], results['final'])
  results['eval_config'] = {'eps': ev.eps, 'step_size': ev.step_size, 'steps': ev.steps,
                            'suite': list(suite), 'autoattack_budget': ev.autoattack_budget}
  if ev.norm != 'Linf':
    results['eval_config']['norm'] = ev.norm
  if jax.process_index() == 0:
    results_lib.write(workdir, results)
  return results
