"""PGD-AT + adversarial weight perturbation (Wu et al. 2020) on the packaged MNIST subset
(the MNIST counterpart of ``configs/cifar10_awp.py``)."""
from sglr_jax.configs import mnist_at


def get_config():
  c = mnist_at.get_config()
  c.objective.awp_gamma = 5e-3  # the reference's perturbation size
  c.objective.awp_warmup_epochs = 0  # AT-AWP perturbs from the first epoch
  return c
