"""AutoAttack accuracy of a checkpoint: the standard ensemble on the first test points."""
from __future__ import annotations

import jax
import numpy as np

from sglr_jax import mesh as mesh_lib
from sglr_jax.attacks import autoattack
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps


class AutoAttack:
  """Runs ``attacks.autoattack`` on the first ``examples`` (0: all) of ``images``.

  One ``model_fn`` object serves every checkpoint: the variables are an argument of
  AutoAttack's compiled programs, so best and final share one compilation. Batches are
  split over ``mesh`` on one process; across processes each attacks all points on its
  default device.
  """

  def __init__(self, model, mesh, images, labels, *, eps: float, key, batch_size: int,
               examples: int, budget: str, ops: AttackOps = DEFAULT_OPS,
               progress: bool = True):
    self.model_fn = lambda variables, z: model.apply(variables, z, train=False)
    self.n = min(len(labels), examples or len(labels))
    self.images, self.labels = images, labels
    self.eps, self.key, self.batch_size = eps, key, batch_size
    self.config = autoattack.BUDGETS[budget]
    self.sharding = mesh_lib.batch_sharding(mesh) if jax.process_count() == 1 else None
    self.ops, self.progress = ops, progress

  def run(self, variables) -> dict:
    n = self.n
    res = autoattack.run_autoattack(
        self.model_fn, self.images[:n].astype(np.float32) / 255.0, self.labels[:n], self.eps,
        variables=variables, key=self.key, batch_size=self.batch_size, progress=self.progress,
        config=self.config, sharding=self.sharding, ops=self.ops)
    return {'autoattack_acc': float(np.mean(res['robust'])),
            'autoattack_examples': int(n),
            'autoattack_after': {k: float(v) for k, v in res['robust_acc_after'].items()}}
