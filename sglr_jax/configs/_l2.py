"""The L2 threat model on top of any config (a helper, not a config).

The usual L2 PGD-AT setting (Rice et al. 2020; the ``robustness`` library): train
PGD-10 with step eps / 4 (normalised-gradient steps, random start on the eps-sphere),
test PGD-20 with step eps / 8, and L2 AutoAttack at the same eps.
"""


def apply(c, eps: float):
  """``c`` switched to the L2 ball of radius ``eps`` for training and evaluation."""
  c.attack.norm = 'L2'
  c.attack.eps = eps
  c.attack.step_size = eps / 4
  c.attack.steps = 10
  c.eval.norm = 'L2'
  c.eval.eps = eps
  c.eval.step_size = eps / 8
  c.eval.steps = 20
  return c
