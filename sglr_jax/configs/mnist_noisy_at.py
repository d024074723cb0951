"""PGD-AT on the packaged MNIST with 40% symmetric label noise (robust overfitting by
memorisation, CPU scale, with a net wide enough to memorise).

The small CNN widened to the capacity to memorise the noisy labels (conv64-s2, conv64-s2,
dense 1024); 40 epochs, lr 0.1 decayed x0.1 after epochs 20 and 30.
"""
from sglr_jax.configs import mnist_at


def get_config():
  c = mnist_at.get_config()
  c.data.noise.kind = 'symmetric'
  c.data.noise.rate = 0.4
  c.data.noise.seed = 0
  c.model.features = (64, 64)
  c.model.dense = 1024
  c.train.epochs = 40
  c.schedule.decay_epochs = (20, 30)
  return c
