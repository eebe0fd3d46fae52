"""Held-out bits/dim: the one evaluation loop (train.py's periodic evaluation,
eval.py), under any tf.distribute strategy.

Every image's dequantization noise comes from (seed, the image's index in
the split), so the result does not depend on the batch size or on how the
batches are split across replicas. Each image is scored with K draws
(`dequant_samples`): the bound (mean over the draws) and the
importance-weighted estimate (see `RealNVP.bits_per_dim_estimates`).
"""

import contextlib
import csv
import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from real_nvp import data
from real_nvp.dequantization import MAX_DEQUANT_SAMPLES
from real_nvp.wall_time import TRACING, WallTime

__all__ = ['Evaluator', 'Evaluation', 'write_scores']


@dataclasses.dataclass
class Evaluation:
  """Per-image results, ordered by the image's index in the split."""
  indices: np.ndarray
  bits_per_dim: np.ndarray
  bits_per_dim_iw: np.ndarray
  dequant_samples: int

  def summary(self):
    """Means and their standard errors over the images, as plain numbers."""
    count = len(self.indices)

    def mean_and_error(values):
      values = values.astype(np.float64)
      error = values.std(ddof=1) / math.sqrt(count) if count > 1 else math.nan
      return float(values.mean()) if count else math.nan, float(error)

    bound, bound_error = mean_and_error(self.bits_per_dim)
    iw, iw_error = mean_and_error(self.bits_per_dim_iw)
    return {'bits_per_dim': bound, 'std_error': bound_error,
            'bits_per_dim_iw': iw, 'std_error_iw': iw_error,
            'num_examples': count, 'dequant_samples': self.dequant_samples}


def write_scores(evaluation, path, names=None):
  """One CSV row per image: index, [name,] bits_per_dim[, bits_per_dim_iw (K > 1)]."""
  with_iw = evaluation.dequant_samples > 1
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['index'] + (['name'] if names else []) + ['bits_per_dim'] +
                    (['bits_per_dim_iw'] if with_iw else []))
    for row, index in enumerate(evaluation.indices):
      writer.writerow([int(index)] + ([names[index]] if names else []) +
                      [f'{evaluation.bits_per_dim[row]:.6f}'] +
                      ([f'{evaluation.bits_per_dim_iw[row]:.6f}'] if with_iw else []))
  return path


class Evaluator:
  """Scores a split with `model` in inference mode (batch-norm averages).

  Args:
    model: a `RealNVP`, created under `strategy`'s scope when one is given.
    strategy: a tf.distribute strategy; default: the current one.
    batch_size: global batch size.
    dequant_samples: dequantization draws K per image.
    seed: seed of the dequantization noise.
    wall_time: a `WallTime` that the first (tracing) call of the step is
      counted in, if given.
  """

  def __init__(self, model, strategy=None, batch_size=256, dequant_samples=1,
               seed=0, wall_time=None):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1; got {batch_size}')
    if not 1 <= dequant_samples <= MAX_DEQUANT_SAMPLES:
      raise ValueError(f'dequant_samples must be in [1, {MAX_DEQUANT_SAMPLES}]; '
                       f'got {dequant_samples}')
    self.model = model
    self.strategy = strategy or tf.distribute.get_strategy()
    self.batch_size = batch_size
    self.dequant_samples = dequant_samples
    self.seed = seed
    self.wall_time = wall_time or WallTime()
    self.step = None  # Traced for the data set's element spec on first use.

  def _replica_step(self, indices, images):
    seeds = tf.stack([tf.fill(tf.shape(indices), tf.constant(self.seed, tf.int64)),
                      indices], axis=1)
    estimates = self.model.bits_per_dim_estimates(images, seeds, self.dequant_samples)
    return indices, estimates['bits_per_dim'], estimates['bits_per_dim_iw']

  def _step_fn(self, batch):
    return self.strategy.run(self._replica_step, args=batch)

  def __call__(self, source, num_examples=None, progress=None):
    """An `Evaluation` of `source`'s held-out split (its first `num_examples`);
    `progress(images_done, images)`, if given, after each batch."""
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: data.eval_dataset(source, self.batch_size, num_examples or None,
                                      ctx, with_indices=True))
    tracing = self.step is None
    if tracing:
      # A batch dimension of None: the last, smaller batch needs no new graph.
      self.step = tf.function(self._step_fn, input_signature=[dataset.element_spec],
                              autograph=False)
    parts = [[], [], []]
    total = min(len(source.eval.images), num_examples or len(source.eval.images))
    for batch in dataset:
      with self.wall_time.phase(TRACING) if tracing else contextlib.nullcontext():
        # Gathered across every replica of every worker, so that each worker
        # holds the whole split's results (and takes the same decisions).
        for part, values in zip(parts, self.step(batch)):
          part.append(self.strategy.gather(values, axis=0).numpy())
      tracing = False
      if progress:
        progress(sum(len(p) for p in parts[0]), total)
    indices, bound, iw = (np.concatenate(p) if p else np.zeros([0]) for p in parts)
    order = np.argsort(indices, kind='stable')
    return Evaluation(indices[order].astype(np.int64), bound[order], iw[order],
                      self.dequant_samples)
