"""Transfer accuracy: PGD crafted on a source model, accuracy of the target on those points."""
from __future__ import annotations

import jax
import numpy as np

from sglr_jax.attacks import pgd
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps, example_keys


class Transfer:
  """Black-box robustness against ``source_model`` (with ``source_variables``).

  The source's variables are fixed, so its attack is compiled once; each example's PGD
  start comes from ``fold_in(key, its index)``, independent of the batching.
  """

  def __init__(self, model, source_model, source_variables, images, labels, *, eps: float,
               step_size: float, steps: int, batch_size: int, key, norm: str = 'Linf',
               ops: AttackOps = DEFAULT_OPS):
    src_fn = lambda z: source_model.apply(source_variables, z, train=False)
    self.attack = jax.jit(lambda xb, yb, kb: pgd.pgd_attack(
        src_fn, xb, yb, eps=eps, step_size=step_size, steps=steps, key=kb, norm=norm,
        ops=ops))
    self.model, self.images, self.labels = model, images, labels
    self.batch_size, self.key = batch_size, key

  def run(self, variables) -> dict:
    tgt_fn = jax.jit(lambda z: self.model.apply(variables, z, train=False))
    x, y, bs = self.images, self.labels, self.batch_size
    correct = 0
    for i in range(0, len(y), bs):
      xb = np.asarray(x[i:i + bs], np.float32) / 255.0  # [B, H, W, C]
      yb = np.asarray(y[i:i + bs])
      kb = example_keys(self.key, np.arange(i, i + len(yb)))  # by index: as the PGD-20 test
      xa = self.attack(xb, yb, kb)
      correct += int(np.sum(np.argmax(np.asarray(tgt_fn(xa)), -1) == yb))
    return {'transfer_acc': correct / len(y)}
