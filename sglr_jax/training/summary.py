"""One epoch's history line, its console summary, and the run's closing line."""
from __future__ import annotations

import numpy as np

from sglr_jax import storage
from sglr_jax.evaluation import metrics


def epoch_record(epoch: int, sums: list, lr: float) -> dict:
  """The train metrics of epoch ``epoch`` (0-based) from its per-step sums."""
  count = sum(float(m['count']) for m in sums)
  return {
      'epoch': epoch + 1,
      'lr': lr,
      'train_loss': sum(float(m['loss_sum']) for m in sums) / count,
      'train_adv_acc': sum(float(m['adv_correct']) for m in sums) / count,
      'grad_norm': float(np.mean([float(m['grad_norm']) for m in sums])),
  }


def train_fit(logits, ds) -> dict:
  """Clean-input fit of the training set (``logits [N, K]``): against the clean labels,
  and on the noisy examples against their noisy labels (memorisation)."""
  out = {'train_clean_acc': metrics.masked_accuracy(logits, ds.train_clean_labels)}
  noisy = ds.noisy
  if noisy.any():
    out['train_noisy_fit'] = metrics.masked_accuracy(logits, ds.train_labels, noisy)
    out['train_noisy_clean_acc'] = metrics.masked_accuracy(logits, ds.train_clean_labels, noisy)
  return out


def console_line(r: dict) -> str:
  parts = [f"epoch {r['epoch']}", f"lr {r['lr']:.4g}", f"loss {r['train_loss']:.4f}",
           f"train adv {100 * r['train_adv_acc']:.1f}%"]
  if 'test_natural_acc' in r:
    parts += [f"test nat {100 * r['test_natural_acc']:.1f}%",
              f"PGD-20 {100 * r['test_pgd20_acc']:.1f}%"]
  if 'train_noisy_fit' in r:
    parts.append(f"noisy fit {100 * r['train_noisy_fit']:.1f}%")
  parts.append(f"{r['epoch_time_s']:.1f}s")
  return ' | '.join(parts)


def closing_line(hist: list, workdir: str) -> str:
  """One line after training: the last epoch's numbers and where everything is."""
  if not hist:
    return f'no epoch finished; workdir {workdir}'
  r = hist[-1]
  nums = [f"epoch {r['epoch']}"]
  for key, name in (('test_natural_acc', 'test nat'), ('test_pgd20_acc', 'PGD-20')):
    if isinstance(r.get(key), float):
      nums.append(f'{name} {100 * r[key]:.1f}%')
  return (f"done: {', '.join(nums)}; history {storage.join(workdir, 'history.jsonl')}, "
          f"checkpoints {storage.join(workdir, 'checkpoints')}")
