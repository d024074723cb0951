"""The PyTorch side of ``bench/vs_torch.py``: the same models, PGD and train step written
once in PyTorch (CPU). torch (and pyautoattack for APGD) are optional benchmark-only
dependencies; nothing here imports jax.
"""
from __future__ import annotations

EPS, STEP = 8 / 255, 2 / 255
K = 10


def image_shape(name):
  return (28, 28, 1) if name == 'small_cnn' else (32, 32, 3)


def torch_models(torch):
  nn = torch.nn
  F = torch.nn.functional

  class Block(nn.Module):
    def __init__(self, cin, c, s):
      super().__init__()
      self.c1 = nn.Conv2d(cin, c, 3, s, 1, bias=False)
      self.b1 = nn.BatchNorm2d(c)
      self.c2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
      self.b2 = nn.BatchNorm2d(c)
      self.sc = nn.Sequential()
      if s != 1 or cin != c:
        self.sc = nn.Sequential(nn.Conv2d(cin, c, 1, s, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
      y = F.relu(self.b1(self.c1(x)))
      y = self.b2(self.c2(y))
      return F.relu(y + self.sc(x))

  class ResNet18(nn.Module):
    def __init__(self, w=64):
      super().__init__()
      self.c = nn.Conv2d(3, w, 3, 1, 1, bias=False)
      self.b = nn.BatchNorm2d(w)
      layers, cin = [], w
      for i in range(4):
        for j in range(2):
          layers.append(Block(cin, w * 2**i, 2 if i > 0 and j == 0 else 1))
          cin = w * 2**i
      self.layers = nn.Sequential(*layers)
      self.fc = nn.Linear(cin, K)

    def forward(self, x):
      x = self.layers(F.relu(self.b(self.c(x))))
      return self.fc(x.mean((2, 3)))

  class SmallCNN(nn.Module):
    """Madry's MNIST net with BatchNorm after each conv, like ours."""
    def __init__(self, w=32):
      super().__init__()
      self.c1 = nn.Conv2d(1, w, 5, 1, 2, bias=False)
      self.b1 = nn.BatchNorm2d(w)
      self.c2 = nn.Conv2d(w, 2 * w, 5, 1, 2, bias=False)
      self.b2 = nn.BatchNorm2d(2 * w)
      self.d1 = nn.Linear(7 * 7 * 2 * w, 1024)
      self.d2 = nn.Linear(1024, K)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
      x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
      return self.d2(F.relu(self.d1(x.flatten(1))))

  return {'resnet18': ResNet18, 'small_cnn': SmallCNN}


def torch_pgd(torch, model, x, y, steps):
  F = torch.nn.functional
  x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
  for _ in range(steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y, reduction='sum')
    g, = torch.autograd.grad(loss, [x_adv])
    x_adv = torch.min(torch.max(x_adv.detach() + STEP * g.sign(), x - EPS), x + EPS).clamp(0, 1)
  return x_adv.detach()


def torch_runner(mode, name, batch, width, threads=2):
  """``(run, None)``: one step of ``mode`` per call; ``(None, why)`` when unavailable."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, 'torch not installed (pip install torch==2.13.0 into the venv)'
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  F = torch.nn.functional
  net = torch_models(torch)[name](*( (width,) if width else ()))
  h, w_, c = image_shape(name)
  x = torch.rand(batch, c, h, w_)
  if mode == 'at':
    y = torch.randint(0, K, (batch,))
    n = batch * 4
    table = F.one_hot(torch.randint(0, K, (n,)), K).float()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    box = {'i': 0}

    def run():
      idx = (torch.arange(batch) + box['i'] * batch) % n
      box['i'] += 1
      net.eval()
      x_adv = torch_pgd(torch, net, x, y, 10)
      net.train()
      logits_adv = net(x_adv)
      with torch.no_grad():
        logits_clean = net(x)
        p = 0.8 * F.softmax(logits_adv.detach(), -1) + 0.2 * F.softmax(logits_clean, -1)
        rows = 0.9 * table[idx] + 0.1 * p
        table[idx] = rows
      loss = -(rows * F.log_softmax(logits_adv, -1)).sum(-1).mean()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return run, None
  net.eval()
  if mode == 'pgd20':
    y = torch.randint(0, K, (batch,))

    def run():
      with torch.no_grad():
        net(x)
      x_adv = torch_pgd(torch, net, x, y, 20)
      with torch.no_grad():
        net(x_adv)
    return run, None
  try:
    from pyautoattack.autopgd_base import APGDAttack  # pylint: disable=g-import-not-at-top
  except ImportError:
    try:
      from autoattack.autopgd_base import APGDAttack  # pylint: disable=g-import-not-at-top
    except ImportError:
      return None, 'neither pyautoattack nor autoattack is installed'
  with torch.no_grad():
    y = net(x).argmax(-1)
  atk = APGDAttack(net, n_iter=100, norm='Linf', n_restarts=1, eps=EPS, loss='ce',
                   device='cpu', seed=0)
  return (lambda: atk.perturb(x, y)), None
