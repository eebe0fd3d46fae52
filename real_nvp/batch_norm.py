"""Batch normalization as a bijection of the flow (paper §3.7, Appendix E).

Data -> latent, per channel c (statistics over batch, height and width):

    y = (x - mean[c]) / sqrt(var[c] + eps)
    log|det dy/dx| = -1/2 * H * W * sum_c log(var[c] + eps)

x, y: [B, H, W, C]; log-det: [B] (the same value for every example).

Training mode normalizes with the batch statistics (gathered across all
replicas under tf.distribute, so every replica uses and stores the same
numbers) and updates the moving averages

    moving <- momentum * moving + (1 - momentum) * batch.

With `lag=True` (Appendix E) training mode uses the updated moving average
`momentum * moving + (1 - momentum) * batch` instead, with gradient through the
batch part only; this lets the flow train on very small batches.
Inference mode and `decode` use the moving averages: a fixed bijection.
`decode(y, training=True)` inverts the training-mode map of a recorded pass
with the statistics that pass used (see batch_statistics.py).
"""

import numpy as np
import tensorflow as tf

from real_nvp import batch_statistics
from real_nvp.coding_maps import AffineMap
from real_nvp.flow_layer import FlowLayer

__all__ = ['FlowBatchNorm', 'batch_moments', 'global_sum']


def global_sum(value):
  """`value` summed over the replicas (itself outside a multi-replica context)."""
  context = tf.distribute.get_replica_context()
  if not context or context.num_replicas_in_sync == 1:
    return value
  return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def batch_moments(x):
  """Per-channel mean and (biased) variance of x [B, H, W, C] over B, H, W.

  Inside a replica context of several replicas the moments are those of the
  global batch (all-reduced), computed in two passes for accuracy.
  """
  axes = [0, 1, 2]
  count = global_sum(tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype))
  mean = global_sum(tf.reduce_sum(x, axis=axes)) / count
  variance = global_sum(
      tf.reduce_sum(tf.square(x - mean), axis=axes)) / count
  return mean, variance


class FlowBatchNorm(FlowLayer):
  """Flow batch normalization; see the module docstring.

  Args:
    momentum: decay of the moving averages (the paper's rho).
    epsilon: added to the variance.
    lag: use Appendix E's running-average statistics in training mode.
  """

  def __init__(self, momentum=0.95, epsilon=1e-4, lag=False, **kwargs):
    super().__init__(**kwargs)
    if not 0. <= momentum < 1.:
      raise ValueError(
          f'`momentum` must be in [0, 1). Received: momentum={momentum}')
    if epsilon <= 0.:
      raise ValueError(f'`epsilon` must be > 0. Received: epsilon={epsilon}')
    self.momentum = momentum
    self.epsilon = epsilon
    self.lag = lag

  def build(self, input_shape):
    channels = input_shape[-1]
    self.moving_mean = self.add_weight(
        name='moving_mean', shape=(channels,), initializer='zeros',
        trainable=False, aggregation='mean')
    self.moving_variance = self.add_weight(
        name='moving_variance', shape=(channels,), initializer='ones',
        trainable=False, aggregation='mean')

  def statistics(self, x, training):
    """The (mean, variance) that normalize x; updates moving averages if
    training (unless replaying a recorded pass, batch_statistics.py)."""
    if not training:
      return (tf.convert_to_tensor(self.moving_mean),
              tf.convert_to_tensor(self.moving_variance))
    rho = self.momentum
    if batch_statistics.is_replaying():
      return batch_statistics.replay(self, *batch_moments(x),
                                     weight=1. - rho if self.lag else 1.)
    batch_mean, batch_variance = batch_moments(x)
    lagged_mean = rho * self.moving_mean + (1. - rho) * batch_mean
    lagged_variance = rho * self.moving_variance + (1. - rho) * batch_variance
    self.moving_mean.assign(tf.stop_gradient(lagged_mean))
    self.moving_variance.assign(tf.stop_gradient(lagged_variance))
    mean, variance = ((lagged_mean, lagged_variance) if self.lag
                      else (batch_mean, batch_variance))
    batch_statistics.record(self, mean, variance)
    return mean, variance

  @staticmethod
  def _log_det(x, log_var, sign):
    """sign * 1/2 * H * W * sum_c log_var[c], once per example of x. -> [B]."""
    spatial = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
    return tf.fill(tf.shape(x)[:1], sign * 0.5 * spatial * tf.reduce_sum(log_var))

  def normalize(self, x, mean, variance):
    """(y, log_det) for fixed statistics: the bijection applied at one step."""
    log_var = tf.math.log(variance + self.epsilon)
    return (x - mean) * tf.exp(-0.5 * log_var), self._log_det(x, log_var, -1.)

  def call(self, x, training=False):
    mean, variance = self.statistics(x, training)
    return self.normalize(x, mean, variance)

  def decode(self, y, training=False):
    self._check_built()
    if training:
      mean, variance = batch_statistics.stored(self)
    else:
      mean, variance = self.moving_mean, self.moving_variance
    log_var = tf.math.log(variance + self.epsilon)
    return y * tf.exp(0.5 * log_var) + mean, self._log_det(y, log_var, 1.)

  def coding_map(self, x, context=None, tensors=None):
    """y = (x - mean) / sqrt(var + eps) with the moving averages, per channel
    (parameters [1, 1, 1, C], broadcast over x)."""
    del x, context, tensors
    mean = self.moving_mean.numpy().astype(np.float64)
    scale = np.exp(-0.5 * np.log(self.moving_variance.numpy().astype(np.float64) +
                                 self.epsilon))
    return AffineMap(scale.reshape(1, 1, 1, -1), (-mean * scale).reshape(1, 1, 1, -1))

  def get_config(self):
    return {**super().get_config(), 'momentum': self.momentum,
            'epsilon': self.epsilon, 'lag': self.lag}
