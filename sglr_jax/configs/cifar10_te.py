"""CIFAR-10, ResNet-18, PGD-AT + temporal ensembling (Dong et al. 2022; paper Tab. 2, row PGD-AT + TE)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar10', 'te', sglr=False)
  c.objective.te_weight = 30.0  # weight of the consistency term after ramp-up
  c.objective.te_momentum = 0.9  # EMA momentum of the prediction ensemble
  c.objective.te_rampup_epochs = 100  # sigmoid ramp-up up to the first LR decay
  return c
