"""Penultimate-layer features and their 2-D picture (paper Fig. 5).

The features are the input of the model's last ``Dense`` layer, captured with Flax's
method interception, so every model of ``sglr_jax.models`` works without a features
method of its own. The picture is scikit-learn's t-SNE; beside it go two numbers that do
not depend on t-SNE's randomness: the silhouette score of the classes in feature space
(cosine distance) and the ratio of the mean intra-class to the mean inter-class distance.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

__all__ = ['penultimate_features', 'tsne_2d', 'separation']


def penultimate_features(model, variables, images, batch_size: int = 500):
  """``[M, D]`` features of ``images`` (uint8 ``[M, H, W, C]``) in inference mode."""

  def features(x):
    seen = []

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
        seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      model.apply(variables, x, train=False)
    if not seen:
      raise ValueError(f'{type(model).__name__} has no Dense layer to take features from')
    return seen[-1].astype(np.float32)

  fn = jax.jit(features)
  images = np.asarray(images)
  out = [np.asarray(fn(images[i:i + batch_size].astype(np.float32) / 255.0))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out).reshape(len(images), -1)


def tsne_2d(features, seed: int = 0, perplexity: float = 30.0):
  """``[M, 2]`` t-SNE embedding (PCA initialisation; ``perplexity`` capped below M)."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  features = np.asarray(features, np.float64)
  perplexity = min(perplexity, max(1.0, (len(features) - 1) / 3.0))
  return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed,
              metric='euclidean').fit_transform(features)


def separation(features, labels) -> dict:
  """``{'silhouette': cosine silhouette score, 'intra_inter': mean intra-class distance /
  mean inter-class distance}`` (Euclidean; lower ratio, better separated)."""
  from sklearn.metrics import silhouette_score  # pylint: disable=g-import-not-at-top
  f, y = np.asarray(features, np.float64), np.asarray(labels)
  sq = (f * f).sum(1)
  d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0))  # [M, M]
  same = y[:, None] == y[None, :]
  off = ~np.eye(len(y), dtype=bool)
  intra, inter = d[same & off], d[~same]
  if intra.size == 0 or inter.size == 0:
    raise ValueError('separation needs two classes and a class with two points')
  return {'silhouette': float(silhouette_score(f, y, metric='cosine')),
          'intra_inter': float(intra.mean() / inter.mean())}
