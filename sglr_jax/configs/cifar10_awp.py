"""CIFAR-10, ResNet-18, PGD-AT + adversarial weight perturbation (Wu et al. 2020; paper
Tab. 2, row AWP): gamma 5e-3, perturbing from the first epoch as the authors' AT-AWP."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar10', 'at', sglr=False)
  c.objective.awp_gamma = 5e-3
  c.objective.awp_warmup_epochs = 0
  return c
