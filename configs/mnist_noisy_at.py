"""PGD-AT on the packaged MNIST with 40% symmetric label noise (robust overfitting by
memorisation, CPU scale; see shared/design/METHOD.md's probe).

The small CNN with a wide dense layer (conv32-s2, conv64-s2, dense 1024: the capacity to
memorise the noisy labels); 30 epochs, lr 0.1 decayed x0.1 after epochs 15 and 22.
"""
from configs import mnist_at


def get_config():
  c = mnist_at.get_config()
  c.data.noise.kind = 'symmetric'
  c.data.noise.rate = 0.4
  c.data.noise.seed = 0
  c.model.dense = 1024
  c.train.epochs = 30
  c.schedule.decay_epochs = (15, 22)
  return c
