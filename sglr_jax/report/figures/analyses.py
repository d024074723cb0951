"""Paper Fig. B.3 and Fig. 5 from ``analysis.checkpoint.analyse`` results: the density of
the labelled class's predicted probability, and the penultimate features in 2-D."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from sglr_jax.report.figures.style import figure, run_color, save


def plot_density(results: Sequence[dict], names: Sequence[str], path: str | os.PathLike,
                 part: str = 'all') -> str | None:
  """One panel per run name: the density of ``part`` ('all', 'flipped', 'kept') of the
  training set at each analysed checkpoint (solid: best, dashed: final)."""
  groups = {}
  for r, n in zip(results, names):
    if part in r.get('density', {}):
      groups.setdefault(n, []).append(r)
  if not groups:
    return None
  fig, axes = figure(1, len(groups), 4.2 * len(groups), 3.4, sharey=True)
  for i, (name, rs) in enumerate(groups.items()):
    ax = axes[0, i]
    for r in rs:
      d = r['density'][part]
      edges = np.asarray(d['edges'])
      ax.step(edges[:-1], d['density'], where='post', color=run_color(i),
              ls='-' if r['kind'] == 'best' else '--', label=f"{r['kind']} (epoch {r['epoch']})")
    ax.set_title(name)
    ax.set_xlabel('predicted probability of the labelled class')
    ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(loc='upper left', fontsize=8)
  axes[0, 0].set_ylabel(f'density ({part} training examples)')
  return save(fig, path)


def plot_embeddings(results: Sequence[dict], names: Sequence[str],
                    path: str | os.PathLike) -> str | None:
  """A t-SNE scatter per result, coloured by test label, its silhouette in the title."""
  shown = [(r, n) for r, n in zip(results, names) if 'tsne' in r]
  if not shown:
    return None
  fig, axes = figure(1, len(shown), 3.4 * len(shown), 3.5)
  for ax, (r, name) in zip(axes[0], shown):
    xy, y = np.asarray(r['tsne']['xy']), np.asarray(r['tsne']['labels'])
    ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap='tab10', s=4, vmin=0, vmax=9)
    ax.set_title(f"{name}, {r['kind']}\nsilhouette {r['separation']['silhouette']:.3f}",
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  return save(fig, path)
