"""Per-epoch information in weights (IIW) and Hessian trace of the training loss (paper
Fig. 1 and B.7), for the epoch's ``history.jsonl`` record (keys ``iiw``, ``hessian_trace``).

Both measure what ``analysis.checkpoint`` measures on a checkpoint: the clean
cross-entropy of the first ``train.analysis_examples`` training examples with the labels
the run trains on (noisy ones included), the float32 model in inference mode with the
state's trained weights (not an SWA average) and BatchNorm statistics. IIW is taken
against the run's own initial weights (built from its seed, once per run, a resumed run
too) and the Hutchinson trace with ``train.hessian_probes`` probes under a key fixed by
the seed and the epoch, so a resumed run logs the numbers of an uninterrupted one.

The examples go through in chunks of ``eval.batch_size``, sharded over the mesh as the
evaluation's batches are. Each chunk contributes its masked sum of losses divided by the
number of examples, so the gradient and the Hessian-vector products are those of the mean
loss over all examples whatever the chunking or the device count. The two programs are
compiled once per run.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sglr_jax import data, experiment, mesh as mesh_lib
from sglr_jax.analysis import hessian, information

__all__ = ['EpochAnalysis', 'hessian_key', 'is_due', 'settings']

_HESSIAN_STREAM = 0x4E55  # separates the probes' keys from the other uses of the seed


def settings(config) -> tuple[int, int, int]:
  """``(every_epochs, examples, probes)`` of the config's ``train`` section (a config
  written before these fields: never)."""
  t = config.train
  return (int(t.get('analysis_every_epochs', 0) or 0), int(t.get('analysis_examples', 512)),
          int(t.get('hessian_probes', 4)))


def is_due(every: int, epoch: int) -> bool:
  """Whether epoch ``epoch`` (1-based, as in the history) is analysed."""
  return every > 0 and epoch % every == 0


def hessian_key(seed: int, epoch: int):
  """The key of epoch ``epoch``'s (1-based) Hutchinson probes."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _HESSIAN_STREAM), epoch)


def _chunk_loss(model, n: int):
  def loss(params, batch_stats, batch):
    x = batch['image'].astype(jnp.float32) / 255.0
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    ce = -jnp.take_along_axis(logp, batch['label'][:, None].astype(jnp.int32), axis=1)[:, 0]
    return jnp.sum(jnp.where(batch['mask'], ce, 0.0)) / n
  return loss


def _programs(model, mesh, n: int):
  """The jitted ``grad(params, batch_stats, batch)`` and ``quad(params, batch_stats,
  batch, key)`` of a chunk, summed over the devices (variables replicated, batch sharded)."""
  loss = _chunk_loss(model, n)

  def grad(params, batch_stats, batch):
    return jax.lax.psum(jax.grad(loss)(params, batch_stats, batch), mesh_lib.AXIS)

  def quad(params, batch_stats, batch, key):
    form = hessian.quadratic_form(lambda p: loss(p, batch_stats, batch), params, key)
    return jax.lax.psum(form, mesh_lib.AXIS)

  def mapped(fn, specs):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(),
                                 check_vma=False))

  return (mapped(grad, (P(), P(), P(mesh_lib.AXIS))),
          mapped(quad, (P(), P(), P(mesh_lib.AXIS), P())))


_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


class EpochAnalysis:
  """``analyser(st, epoch) -> {'iiw', 'hessian_trace'}`` for the epochs due, else {}."""

  def __init__(self, exp: experiment.Experiment, params0):
    """``params0``: the run's initial weights (kept on the host)."""
    self.exp = exp
    self.every, examples, self.probes = settings(exp.config)
    ds = exp.ds
    n = min(examples, len(ds.train_labels))  # more than the training set: all of it
    self.params0 = jax.device_get(params0)
    self.batches = []
    for b in data.eval_batches(ds.train_images[:n], ds.train_labels[:n], exp.eval.batch_size,
                               jax.process_index(), jax.process_count()):
      b.pop('index')
      self.batches.append(mesh_lib.to_global(b, exp.mesh))
    self.grad, self.quad = _programs(exp.eval_model, exp.mesh, n)

  @classmethod
  def create(cls, exp: experiment.Experiment, params0) -> Optional['EpochAnalysis']:
    """The run's analyser, None when ``train.analysis_every_epochs`` is 0."""
    return cls(exp, params0) if settings(exp.config)[0] > 0 else None

  def __call__(self, st, epoch: int) -> dict:
    """The measurements of epoch ``epoch`` (1-based) on ``st``'s weights, {} if not due."""
    if not is_due(self.every, epoch):
      return {}
    with experiment.eval_precision(self.exp.eval):
      return self._measure(st.params, st.batch_stats, epoch)

  def _measure(self, params, batch_stats, epoch: int) -> dict:
    g = None
    for b in self.batches:
      gb = self.grad(params, batch_stats, b)
      g = gb if g is None else _add(g, gb)
    forms = [[self.quad(params, batch_stats, b, k) for b in self.batches]
             for k in hessian.probe_keys(hessian_key(self.exp.seed, epoch), self.probes)]
    forms, g, params = jax.device_get((forms, g, params))
    iiw = information.information_of_gradient(params, self.params0, g)['iiw']
    trace = hessian.summarise([sum(float(f) for f in fs) for fs in forms])['trace']
    return {'iiw': iiw, 'hessian_trace': trace}
