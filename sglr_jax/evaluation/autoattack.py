"""AutoAttack accuracy of a checkpoint: the standard ensemble (or the 'rand' version) on
the first test points.

With a workdir, each checkpoint's run is resumable (``WORKDIR/eval_state/<kind>.npz``,
removed once the run is complete) and its adversarial examples are written to
``WORKDIR/adversarial/<kind>.npz`` (any ``etils.epath`` workdir, e.g. gs://).

Under ``jax.distributed`` every process runs this with the same arguments: each batch is
split over the devices of all processes, every process gets the whole result
(``attacks.autoattack.hosts``), and process 0 writes the files.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from etils import epath

from sglr_jax import mesh as mesh_lib
from sglr_jax.attacks import autoattack
from sglr_jax.attacks.autoattack import hosts
from sglr_jax.attacks.autoattack.programs import Randomised
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps


class AutoAttack:
  """Runs ``attacks.autoattack`` on the first ``examples`` (0: all) of ``images``.

  One ``model_fn`` object serves every checkpoint: the variables are an argument of
  AutoAttack's compiled programs, so best and final share one compilation. Batches are
  split over ``mesh`` (all devices of all processes).
  """

  def __init__(self, model, mesh, images, labels, *, eps: float, key, batch_size: int,
               examples: int, budget: str, norm: str = 'Linf', version: str = 'standard',
               ops: AttackOps = DEFAULT_OPS, progress: bool = True, workdir: str = ''):
    self.model_fn = lambda variables, z: model.apply(variables, z, train=False)
    # 'rand' attacks a randomised forward pass: each draw gets its own 'dropout' rng
    # stream (a model without random layers at inference ignores it)
    self.draw_fn = lambda variables, z, key: model.apply(variables, z, train=False,
                                                         rngs={'dropout': key})
    self.version = version
    self.n = min(len(labels), examples or len(labels))
    self.images, self.labels = images, labels
    self.eps, self.key, self.batch_size = eps, key, batch_size
    self.config = dataclasses.replace(autoattack.BUDGETS[budget], norm=norm)
    self.sharding = mesh_lib.batch_sharding(mesh)
    self.ops, self.workdir = ops, workdir
    self.progress = progress and jax.process_index() == 0  # one set of bars on a pod

  def run(self, variables, kind: str = '') -> dict:
    """The metrics of one checkpoint; ``kind`` ('best', 'final') names its files."""
    n = self.n
    x, y = self.images[:n].astype(np.float32) / 255.0, self.labels[:n]
    state = None  # process 0 writes it and reads it for all
    if self.workdir and kind:
      state = epath.Path(self.workdir) / 'eval_state' / f'{kind}.npz'
    rand = self.version == 'rand'
    res = autoattack.run_autoattack(
        self.draw_fn if rand else self.model_fn, x, y, self.eps, variables=variables,
        key=self.key, batch_size=self.batch_size, progress=self.progress,
        config=self.config, sharding=self.sharding, ops=self.ops, state_path=state,
        version=self.version, randomised=rand)
    if state is not None:
      self.write_examples(variables, kind, x, res)
      if hosts.lead():
        state.unlink(missing_ok=True)
    return {'autoattack_acc': float(np.mean(res['robust'])),
            'autoattack_examples': int(n),
            'autoattack_after': {k: float(v) for k, v in res['robust_acc_after'].items()},
            'autoattack_flags': list(res['flags']),
            'autoattack_max_perturbation': float(res['max_perturbation']),
            'autoattack_nan_count': int(res['nan_count'])}

  def write_examples(self, variables, kind: str, x, res) -> str:
    """``WORKDIR/adversarial/<kind>.npz``: index, x_adv (float32), clean and adversarial
    predictions, and the attack that broke each point ('' where none did). Every process
    predicts (the batches span them all); process 0 writes."""
    if self.version == 'rand':  # one more draw of the model for each record
      model_fn, key = Randomised(self.draw_fn), jax.random.fold_in(self.key, 1)
    else:
      model_fn, key = self.model_fn, None
    pred = lambda z: autoattack.predict(model_fn, z, self.batch_size, self.sharding,
                                        variables, key)
    arrays = dict(index=np.arange(len(x)), x_adv=res['x_adv'].astype(np.float32),
                  clean_pred=pred(x), adv_pred=pred(res['x_adv']),
                  broken_by=res['broken_by'].astype(str))
    path = epath.Path(self.workdir) / 'adversarial' / f'{kind}.npz'
    if hosts.lead():
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.parent / f'{path.name}.tmp{os.getpid()}.npz'
      with tmp.open('wb') as f:
        np.savez_compressed(f, **arrays)
      tmp.replace(path)
    return str(path)
