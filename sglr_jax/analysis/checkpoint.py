"""Every analysis of one trained checkpoint: ``analyse(workdir, kind) -> dict``.

The losses are the clean cross-entropy on the training labels the run trained on (noisy
ones included) with the model in inference mode, so they are functions of the weights
alone; ``params0`` is the run's own initialisation, rebuilt from its seed. The features
are those of the first test points, the density that of the training set, split into the
examples whose label was flipped by the noise and the others.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sglr_jax import experiment
from sglr_jax.analysis import confidence, embedding, hessian, information
from sglr_jax.evaluation import predict

__all__ = ['analyse', 'clean_ce']


def clean_ce(model, batch_stats):
  """``loss_fn(params, (images, labels))``: the mean clean cross-entropy, ``model`` in
  inference mode with ``batch_stats`` (uint8 images)."""
  def loss_fn(params, batch):
    x, y = batch
    logits = model.apply({'params': params, 'batch_stats': batch_stats},
                         x.astype(jnp.float32) / 255.0, train=False)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])
  return loss_fn


def analyse(workdir: str, kind: str = 'final', *, batches: int = 8, batch_size: int = 128,
            probes: int = 8, embed_points: int = 500, seed: int = 0, tsne: bool = True) -> dict:
  """IIW and gradient norm, Hessian trace, labelled-class probability density and the
  penultimate-feature picture of checkpoint ``kind`` of ``workdir``."""
  exp = experiment.build(experiment.load_workdir_config(workdir))
  st, epoch = experiment.restore(exp, workdir, kind)
  params0 = experiment.initial_state(exp).params
  model, ds = exp.eval_model, exp.ds
  loss_fn = clean_ce(model, st.batch_stats)
  rng = np.random.default_rng(seed)
  idx = [rng.choice(len(ds.train_labels), batch_size, replace=False) for _ in range(batches)]
  data = [(ds.train_images[i], ds.train_labels[i]) for i in idx]
  out = {'workdir': workdir, 'kind': kind, 'epoch': int(epoch)}
  with experiment.eval_precision(exp.eval):
    out.update(information.information_in_weights(loss_fn, st.params, params0, data))
    out['hessian'] = hessian.hutchinson_trace(
        lambda p: jnp.mean(jnp.stack([loss_fn(p, b) for b in data[:2]])), st.params,
        jax.random.PRNGKey(seed), probes)
    step = predict.make_eval_step(model, exp.mesh, eps=0.0, step_size=0.0, steps=0)
    logits, _ = predict.predict(step, experiment.variables_of(st), ds.train_images,
                                ds.train_labels, exp.eval.batch_size, exp.mesh,
                                jax.random.PRNGKey(seed))
    p = confidence.labelled_probability(logits, ds.train_labels)
    noisy = ds.train_labels != ds.train_clean_labels
    out['density'] = {'all': confidence.density(p)}
    if noisy.any():
      out['density']['flipped'] = confidence.density(p[noisy])
      out['density']['kept'] = confidence.density(p[~noisy])
    out['labelled_prob_mean'] = float(p.mean())
    x, y = ds.test_images[:embed_points], ds.test_labels[:embed_points]
    feats = embedding.penultimate_features(model, experiment.variables_of(st), x)
  out['separation'] = embedding.separation(feats, y)
  if tsne:
    out['tsne'] = {'xy': embedding.tsne_2d(feats, seed).tolist(), 'labels': y.tolist()}
  return out
