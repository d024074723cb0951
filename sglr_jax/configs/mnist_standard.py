"""Standard (non-adversarial) training on the packaged MNIST subset: KD-SWA's standard
teacher (``configs/mnist_kd_swa.py`` distils from its final checkpoint).

``attack.eps = 0``: the one-step training attack returns the clean image, so the
objective is the plain CE; the test metrics stay the robust ones.
"""
from sglr_jax.configs import mnist_at


def get_config():
  c = mnist_at.get_config()
  c.attack.eps = 0.0
  c.attack.steps = 1
  c.eval.suite = ('natural', 'pgd20', 'ece')
  return c
