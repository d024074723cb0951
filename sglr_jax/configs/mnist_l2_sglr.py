"""PGD-AT + SGLR on the packaged MNIST subset under the L2 threat model, eps 2.0.

Train PGD-10 step 0.5, test PGD-20 step 0.25 and L2 AutoAttack at eps 2.0 (``_l2``);
everything else as ``mnist_sglr``.
"""
from sglr_jax.configs import _l2, mnist_sglr


def get_config():
  return _l2.apply(mnist_sglr.get_config(), eps=2.0)
