"""Natural and PGD accuracy of the test points, one prediction pass per checkpoint."""
from __future__ import annotations

from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps
from sglr_jax.evaluation import metrics, predict


class NaturalPGD:
  """Clean and PGD-``steps`` logits of ``images`` (uint8 ``[M, H, W, C]``) and their accuracy.

  The logits are returned too (``logits``): calibration reads the same ones, so the PGD
  points are crafted once per checkpoint. The eval step is compiled once, for every
  checkpoint of the model.
  """

  def __init__(self, model, mesh, images, labels, *, eps: float, step_size: float, steps: int,
               batch_size: int, key, norm: str = 'Linf', ops: AttackOps = DEFAULT_OPS):
    self.eval_step = predict.make_eval_step(model, mesh, eps=eps, step_size=step_size,
                                            steps=steps, norm=norm, ops=ops)
    self.mesh, self.images, self.labels = mesh, images, labels
    self.batch_size, self.key = batch_size, key

  def logits(self, variables):
    """(clean ``[M, K]``, adversarial ``[M, K]``) numpy logits."""
    return predict.predict(self.eval_step, variables, self.images, self.labels, self.batch_size,
                           self.mesh, self.key)

  def metrics(self, clean, adv) -> dict:
    return {'natural_acc': metrics.masked_accuracy(clean, self.labels),
            'pgd20_acc': metrics.masked_accuracy(adv, self.labels)}

  def run(self, variables) -> dict:
    return self.metrics(*self.logits(variables))
