"""CIFAR-10, ResNet-18, PGD-AT + SGLR under the L2 threat model, eps 0.5.

Train PGD-10 step 0.125, test PGD-20 step 0.0625 and L2 AutoAttack at eps 0.5
(``_l2``); everything else is the paper's CIFAR setup (``_cifar_paper``).
"""
from sglr_jax.configs import _cifar_paper as cifar_paper
from sglr_jax.configs import _l2


def get_config():
  return _l2.apply(cifar_paper.get_config('cifar10', 'at', sglr=True), eps=0.5)
