"""PGD-AT + knowledge distillation (Chen et al. 2021, KD-AT / KD-SWA):
``c_ce CE(f(x'), t) + sum_j c_j T^2 CE(softmax(g_j(x') / T), f(x') / T)``.

The teachers ``g_j`` are trained runs in inference mode on the student's ``x'`` (a
robust teacher and, optionally, a standard one); ``x'`` is PGD on the student's CE as in
PGD-AT. The teacher term is the soft cross-entropy, which differs from the KL divergence
by the teacher's entropy only (the same gradient). The hard CE term keeps the
objective's target, so SGLR's refined target composes with it.
"""
from __future__ import annotations

import jax

from sglr_jax.attacks import losses
from sglr_jax.objectives import at, base


def teacher_weights(hp: base.ObjectiveParams, num_teachers: int) -> tuple[float, ...]:
  """The weights of the teachers' terms, robust teacher first."""
  return (hp.kd_weight, hp.kd_std_weight)[:num_teachers]


def distillation(hp: base.ObjectiveParams, logits, teacher_logits) -> jax.Array:
  """``sum_j c_j T^2 CE(softmax(g_j / T), f / T)`` per example ``[B]``; ``logits [B, K]``,
  ``teacher_logits``: one ``[B, K]`` per teacher (no gradient flows into them)."""
  t = hp.kd_temperature
  total = 0.0
  for w, g in zip(teacher_weights(hp, len(teacher_logits)), teacher_logits):
    soft = jax.nn.softmax(jax.lax.stop_gradient(g).astype(logits.dtype) / t)  # [B, K]
    total = total + w * t * t * losses.soft_cross_entropy(logits / t, soft)
  return total


def loss_with_teachers(hp: base.ObjectiveParams, per_example_ce, logits_adv, teacher_logits):
  """The KD loss ``[B]`` from the objective's CE ``[B]`` (hard or refined target)."""
  return hp.kd_ce_weight * per_example_ce + distillation(hp, logits_adv, teacher_logits)


# Without teachers the loss is PGD-AT's CE; ``objectives.train_loss`` adds the teacher
# terms when the step passes the teachers' logits.
OBJECTIVE = at.OBJECTIVE
