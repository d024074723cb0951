"""``evaluate(config, workdir)``: restore ``best`` and ``final``, run the suite, write
``results.json`` and ``results.md`` (the paper's Best / Final / Diff table).

Suite entries (``eval.suite``): natural, pgd20, autoattack (standard ensemble on
``eval.autoattack_examples`` points), ece (15 bins, clean and PGD-20 inputs),
transfer (PGD-20 crafted on ``eval.transfer_from``'s final model).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from sglr_jax import checkpoints, metrics, parallel, train

METRIC_LABELS = {'natural_acc': 'Natural', 'pgd20_acc': 'PGD-20', 'autoattack_acc': 'AutoAttack',
                 'transfer_acc': 'Transfer', 'ece_clean': 'ECE clean', 'ece_adv': 'ECE PGD-20'}


NoCheckpointError = checkpoints.NoCheckpointError


def restore_for_eval(s: train.Setup, workdir: str, kind: str):
  """(state, epoch) of checkpoint ``kind`` ('best' or 'final')."""
  target = train.initial_state(s)
  shardings = jax.tree.map(lambda x: x.sharding, target)
  got = checkpoints.restore(workdir, kind, target, shardings)
  if got is None:
    raise NoCheckpointError(
        f'{workdir} has no {kind!r} checkpoint (looked in {os.path.join(workdir, "checkpoints", kind)}); '
        'train first with --mode=train, or point --workdir at a trained run')
  return got


def _test_points(s: train.Setup, limit: int):
  x, y = s.ds.test_images, s.ds.test_labels
  if limit:
    x, y = x[:limit], y[:limit]
  return x, y


def evaluate_state(s: train.Setup, st, suite, transfer_setup=None, progress=True,
                   model_fn=None) -> dict:
  """Runs the suite on one restored state; accuracies are fractions. ``model_fn``:
  ``(variables, x) -> logits`` shared by the checkpoints of one evaluation, so that
  AutoAttack's programs compile once for both."""
  c = s.config
  x, y = _test_points(s, c.eval.num_examples)
  out = {'num_examples': int(len(y))}
  key = jax.random.PRNGKey(c.eval.seed)
  variables = train.variables_of(st)
  if {'natural', 'pgd20', 'ece'} & set(suite):
    eval_step = train.steps_lib.make_eval_step(s.model, s.mesh, eps=c.eval.eps,
                                               step_size=c.eval.step_size, steps=c.eval.steps)
    clean, adv = train.predict(eval_step, variables, x, y, c.eval.batch_size, s.mesh, key)
    out['natural_acc'] = metrics.masked_accuracy(clean, y)
    if 'pgd20' in suite or 'ece' in suite:
      out['pgd20_acc'] = metrics.masked_accuracy(adv, y)
    if 'ece' in suite:
      cal_clean, cal_adv = metrics.calibration(clean, y), metrics.calibration(adv, y)
      out['ece_clean'], out['ece_adv'] = cal_clean['ece'], cal_adv['ece']
      out['reliability'] = {'clean': cal_clean, 'adv': cal_adv}
  if 'autoattack' in suite:
    out.update(_autoattack(s, variables, x, y, progress, model_fn or eval_model_fn(s)))
  if 'transfer' in suite and transfer_setup is not None:
    out.update(_transfer(s, variables, transfer_setup, x, y, key))
  return out


def eval_model_fn(s: train.Setup):
  """``(variables, x) -> logits`` in inference mode."""
  return lambda variables, z: s.model.apply(variables, z, train=False)


def _autoattack(s, variables, x, y, progress, model_fn) -> dict:
  from sglr_jax.attacks import autoattack  # pylint: disable=g-import-not-at-top
  c = s.config
  n = min(len(y), c.eval.autoattack_examples or len(y))
  res = autoattack.run_autoattack(
      model_fn, x[:n].astype(np.float32) / 255.0, y[:n], c.eval.eps, variables=variables,
      key=jax.random.PRNGKey(c.eval.seed), batch_size=c.eval.batch_size, progress=progress,
      config=autoattack.BUDGETS[c.eval.get('autoattack_budget', 'standard')],
      sharding=parallel.batch_sharding(s.mesh) if jax.process_count() == 1 else None)
  return {'autoattack_acc': float(np.mean(res['robust'])),
          'autoattack_examples': int(n),
          'autoattack_after': {k: float(v) for k, v in res['robust_acc_after'].items()}}


def _transfer(s, variables, source, x, y, key) -> dict:
  """PGD-20 crafted on the source model, accuracy of the target on those points."""
  src_setup, src_state = source
  from sglr_jax.attacks import pgd  # pylint: disable=g-import-not-at-top
  c = s.config
  src_vars = train.variables_of(src_state)
  src_fn = lambda z: src_setup.model.apply(src_vars, z, train=False)
  tgt_fn = jax.jit(lambda z: s.model.apply(variables, z, train=False))
  attack = jax.jit(lambda xb, yb, kb: pgd.pgd_attack(
      src_fn, xb, yb, eps=c.eval.eps, step_size=c.eval.step_size, steps=c.eval.steps, key=kb))
  correct = 0
  bs = c.eval.batch_size
  for i in range(0, len(y), bs):
    xb = np.asarray(x[i:i + bs], np.float32) / 255.0
    yb = np.asarray(y[i:i + bs])
    kb = jax.vmap(jax.random.fold_in, (None, 0))(key, np.arange(i, i + len(yb)))
    xa = attack(xb, yb, kb)
    correct += int(np.sum(np.argmax(np.asarray(tgt_fn(xa)), -1) == yb))
  return {'transfer_acc': correct / len(y)}


def diff(best: dict, final: dict) -> dict:
  return {k: best[k] - final[k] for k in METRIC_LABELS
          if isinstance(best.get(k), float) and isinstance(final.get(k), float)}


def markdown_table(results: dict, title: str = '') -> str:
  """The paper's format: one row per metric, Best / Final / Diff in percent."""
  best, final, d = results['best'], results['final'], results['diff']
  lines = []
  if title:
    lines += [f'### {title}', '']
  lines += [f"| Metric | Best (epoch {best['epoch']}) | Final (epoch {final['epoch']}) | Diff |",
            '|---|---|---|---|']
  smoke = results.get('eval_config', {}).get('autoattack_budget') == 'smoke'
  for k, label in METRIC_LABELS.items():
    if k == 'autoattack_acc' and smoke:
      label += ' (smoke budget)'  # not a robustness number
    if k in d:
      lines.append(f'| {label} | {100 * best[k]:.2f} | {100 * final[k]:.2f} | {100 * d[k]:+.2f} |')
  return '\n'.join(lines) + '\n'


def evaluate(config, workdir: str, progress: bool = True) -> dict:
  """Evaluates ``best`` and ``final`` of ``workdir``; writes results.json/.md."""
  s = train.build(config)
  for kind in ('best', 'final'):
    if not checkpoints.available(workdir, kind):
      raise NoCheckpointError(
          f'{workdir} has no {kind!r} checkpoint; train it to the end first '
          f'(python run.py --config=... --workdir={workdir})')
  suite = tuple(config.eval.suite)
  transfer_setup = None
  if 'transfer' in suite:
    src_config = load_workdir_config(config.eval.transfer_from)
    src = train.build(src_config)
    transfer_setup = (src, restore_for_eval(src, config.eval.transfer_from, 'final')[0])
  results = {}
  model_fn = eval_model_fn(s)
  for kind in ('best', 'final'):
    st, epoch = restore_for_eval(s, workdir, kind)
    if kind == 'final' and results['best']['epoch'] == int(epoch):
      results[kind] = dict(results['best'])  # the same checkpoint: evaluated once
      continue
    r = evaluate_state(s, st, suite, transfer_setup, progress, model_fn)
    r['epoch'] = int(epoch)
    results[kind] = r
  results['diff'] = diff(results['best'], results['final'])
  results['eval_config'] = {'eps': config.eval.eps, 'step_size': config.eval.step_size,
                            'steps': config.eval.steps, 'suite': list(suite),
                            'autoattack_budget': config.eval.get('autoattack_budget',
                                                                 'standard')}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
    with open(os.path.join(workdir, 'results.md'), 'w') as f:
      f.write(markdown_table(results, title=os.path.basename(os.path.normpath(workdir))))
  return results


def load_workdir_config(workdir: str):
  """The resolved config a run wrote into its workdir."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise NoCheckpointError(f'{workdir} has no config.json: not a sglr_jax workdir')
  with open(path) as f:
    d = json.load(f)
  return ml_collections.ConfigDict(_tuples(d))


def _tuples(d):
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d
