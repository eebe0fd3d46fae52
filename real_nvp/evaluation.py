"""Held-out bits/dim of a trained model with several dequantization draws."""

import math

import numpy as np
import tensorflow as tf

from real_nvp import data

__all__ = ['bits_per_dim_statistics']


def bits_per_dim_statistics(model, source, batch_size=256, num_examples=None,
                            dequant_samples=1, seed=0):
  """Mean bits/dim over a split and its standard error, in inference mode.

  Each image's bits/dim is averaged over `dequant_samples` uniform-noise
  draws; the standard error is that of the mean over images.
  Returns {'bits_per_dim', 'std_error', 'num_examples'}.
  """
  if dequant_samples < 1:
    raise ValueError(f'dequant_samples must be >= 1; got {dequant_samples}')
  dataset = data.eval_dataset(source, batch_size, num_examples)
  # Batch dimension None: one graph for every batch, the last one included.
  score = tf.function(lambda images, seed: model.bits_per_dim(images, seed=seed),
                      input_signature=[dataset.element_spec, tf.TensorSpec([2], tf.int64)])
  per_image = []
  for index, images in enumerate(dataset):
    draws = [score(images, tf.constant([seed, index * dequant_samples + k], tf.int64))
             for k in range(dequant_samples)]
    per_image.append(tf.reduce_mean(tf.stack(draws), axis=0).numpy())
  per_image = np.concatenate(per_image).astype(np.float64)
  count = len(per_image)
  std_error = per_image.std(ddof=1) / math.sqrt(count) if count > 1 else math.nan
  return {'bits_per_dim': float(per_image.mean()), 'std_error': float(std_error),
          'num_examples': count}
