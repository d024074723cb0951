"""PGD-AT under 40% symmetric label noise with the wide small CNN WITHOUT BatchNorm: the
setting where robust overfitting is unmistakable on the packaged MNIST (the network
memorises most flipped labels after the first epochs and its PGD-20 accuracy falls far
below its best; docs/RESULTS.md). Otherwise as ``mnist_noisy_at``."""
from sglr_jax.configs import mnist_noisy_at


def get_config():
  c = mnist_noisy_at.get_config()
  c.model.batch_norm = False
  return c
