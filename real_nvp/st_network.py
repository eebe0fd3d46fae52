"""The s/t network of a coupling: a weight-normalized residual CNN.

Paper §3.4 and §4.1: s and t are deep convolutional ResNets with rectifiers,
batch normalization and weight normalization. The network returns raw
parameters; the coupling's transform (transforms.py) turns them into s and t.
"""

import keras
import tensorflow as tf

from real_nvp import batch_statistics
from real_nvp.batch_norm import batch_moments, global_sum
from real_nvp.thread_scope import ThreadScope

__all__ = ['WeightNormConv2D', 'ResidualBatchNorm', 'STNetwork', 'folded_weights']

_tracing = ThreadScope()


def folded_weights(store):
  """Inference-mode networks traced inside read their weights folded once
  into variables of their own: each convolution's weight-normalized kernel
  and its bias, each batch norm's x * scale + shift (instead of the fused
  kernel, which costs oneDNN ~70 us a call however small the batch). For
  graphs called many times on a few images each (the lossless coder's,
  batch_coder.py): they keep the weights of their first tracing. `store`, a
  dict that must outlive the graphs, holds the variables by layer. Trace
  nothing in training mode inside: a convolution does not know the mode,
  and no gradient reaches the weights through their folded copies.

  Variables, not constants: a oneDNN convolution whose filter is a
  constant, run in a process that also runs the same convolution from a
  variable, makes both non-deterministic (bench/mixed_filters.py)."""
  return _tracing.holding(store)


def _folded(layer, compute, dtype):
  """The tensors `compute()` returns, evaluated once, outside the graph being
  traced, into variables of the store, read as `dtype`; None outside
  `folded_weights`."""
  store = _tracing.value()
  if store is None:
    return None
  if layer not in store:
    with tf.init_scope():
      store[layer] = [tf.Variable(tensor, trainable=False) for tensor in compute()]
  return [tf.cast(variable, dtype) for variable in store[layer]]


class WeightNormConv2D(keras.layers.Layer):
  """Conv2D with weight normalization (Salimans & Kingma, 2016).

      w[..., o] = gain[o] * v[..., o] / ||v[..., o]||      (norm over kh, kw, c_in)
      y = conv2d(x, w) + bias                               x: [B, H, W, c_in]

  `gain` is the weight-normalization scale parameter that receives the
  paper's L2 penalty. `zero_init=True` starts gain and bias at 0, so the layer
  outputs exact zeros at initialization.
  """

  def __init__(self, filters, kernel_size=3, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    if filters < 1:
      raise ValueError(f'`filters` must be >= 1. Received: filters={filters}')
    self.filters = filters
    self.kernel_size = kernel_size
    self.zero_init = zero_init

  def build(self, input_shape):
    in_channels = input_shape[-1]
    self._pixels = input_shape[1] * input_shape[2]
    self.direction = self.add_weight(
        name='direction',
        shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
        initializer=keras.initializers.HeNormal())
    self.gain = self.add_weight(
        name='gain', shape=(self.filters,),
        initializer='zeros' if self.zero_init else 'ones')
    self.bias = self.add_weight(
        name='bias', shape=(self.filters,), initializer='zeros')

  def _kernel(self):
    norm = tf.sqrt(tf.reduce_sum(tf.square(self.direction), axis=[0, 1, 2]))
    return self.direction * (self.gain / norm)

  def call(self, x):
    kernel, bias = _folded(
        self, lambda: (self._kernel(), tf.convert_to_tensor(self.bias)), x.dtype) or (
            self._kernel(), self.bias)
    return tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=1, padding='SAME'), bias)

  def flops_per_example(self):
    """2 x multiply-adds of the convolution for one example (stride 1, SAME)."""
    k, _, c_in, c_out = self.direction.shape
    return 2 * k * k * c_in * c_out * self._pixels

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'kernel_size': self.kernel_size, 'zero_init': self.zero_init}


class ResidualBatchNorm(keras.layers.Layer):
  """Batch normalization inside the s/t network (not part of the flow).

      y = gamma * (x - mean) / sqrt(var + eps) + beta      x: [B, H, W, C]

  Training mode uses the batch's per-channel (biased) moments and updates the
  moving averages; inference mode uses the moving averages. A single replica
  uses TF's fused kernel; several replicas use global moments (all-reduced),
  so the result does not depend on how the batch is split. Replaying a
  recorded pass (batch_statistics.py), training mode uses the recorded
  moments and moves no average.
  """

  def __init__(self, momentum=0.95, epsilon=1e-4, **kwargs):
    super().__init__(**kwargs)
    self.momentum = momentum
    self.epsilon = epsilon

  def build(self, input_shape):
    shape = (input_shape[-1],)
    self.gamma = self.add_weight(name='gamma', shape=shape, initializer='ones',
                                 autocast=False)
    self.beta = self.add_weight(name='beta', shape=shape, initializer='zeros',
                                autocast=False)
    self.moving_mean = self.add_weight(
        name='moving_mean', shape=shape, initializer='zeros', trainable=False,
        autocast=False, aggregation='mean')
    self.moving_variance = self.add_weight(
        name='moving_variance', shape=shape, initializer='ones', trainable=False,
        autocast=False, aggregation='mean')

  def _update_moving_averages(self, mean, variance):
    # moving + (1 - rho) (batch - moving): no product of constants for graph
    # optimizers to regroup, which they would do only where the batch
    # statistic has no other use (the memory-saving gradient records it), and
    # every --memory_saving mode moves the averages by the same numbers.
    for average, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
      average.assign(average + (1. - self.momentum) * (tf.stop_gradient(batch) - average))

  def _normalize(self, x, mean, variance):
    scale, shift = self._affine_map(mean, variance)
    return x * tf.cast(scale, x.dtype) + tf.cast(shift, x.dtype)

  def _affine_map(self, mean, variance):
    scale = self.gamma * tf.math.rsqrt(variance + self.epsilon)
    return scale, self.beta - mean * scale

  def _normalize_replayed(self, x, mean, variance):
    """Training-mode normalization with recorded batch statistics. Its
    gradient is that of batch statistics (through the batch's moments, over
    the global batch), as the fused kernel's is, from x alone: autodiff of
    the moments would keep several tensors of x's size per batch norm."""
    gamma, beta = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
    inv_std = tf.math.rsqrt(variance + self.epsilon)

    def standardized(x):
      return (tf.cast(x, inv_std.dtype) - mean) * inv_std

    @tf.custom_gradient
    def normalize(x, gamma, beta):
      def grad(d_y):
        d_y, x_hat = tf.cast(d_y, inv_std.dtype), standardized(x)
        local_d_beta = tf.reduce_sum(d_y, axis=[0, 1, 2])
        local_d_gamma = tf.reduce_sum(d_y * x_hat, axis=[0, 1, 2])
        count = global_sum(tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), inv_std.dtype))
        d_x = gamma * inv_std * (
            d_y - (global_sum(local_d_beta) + x_hat * global_sum(local_d_gamma)) / count)
        # The variables' gradients are this replica's part, as autodiff's are.
        return tf.cast(d_x, x.dtype), local_d_gamma, local_d_beta
      return tf.cast(standardized(x) * gamma + beta, x.dtype), grad

    return normalize(x, gamma, beta)

  def call(self, x, training=False):
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context else 1
    fused = x.dtype != tf.float64  # The fused kernel has no float64 version.
    if training and batch_statistics.is_replaying():
      return self._normalize_replayed(x, *batch_statistics.stored(self))
    if training and (replicas > 1 or not fused):
      mean, variance = batch_moments(tf.cast(x, self.variable_dtype))
      self._update_moving_averages(mean, variance)
      batch_statistics.record(self, mean, variance)
      return self._normalize(x, mean, variance)
    folded = None if training else _folded(
        self, lambda: self._affine_map(self.moving_mean, self.moving_variance), x.dtype)
    if folded:
      return x * folded[0] + folded[1]
    if not training and not fused:
      return self._normalize(x, self.moving_mean, self.moving_variance)
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, self.gamma, self.beta,
        mean=None if training else self.moving_mean,
        variance=None if training else self.moving_variance,
        epsilon=self.epsilon, is_training=training)[:3]
    if training:
      # The fused kernel returns the unbiased variance; store the biased one,
      # as the all-reduced path does.
      count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), variance.dtype)
      variance = variance * (count - 1.) / count
      self._update_moving_averages(mean, variance)
      batch_statistics.record(self, mean, variance)
    return y

  def get_config(self):
    return {**super().get_config(), 'momentum': self.momentum,
            'epsilon': self.epsilon}


class STNetwork(keras.layers.Layer):
  """Residual CNN x [B, H, W, c_in] (+ context [B, H, W, f]) -> [B, H, W, out_channels].

      h = conv3x3(concat(x, context))
      h = h + conv3x3(relu(bn(conv3x3(relu(bn(h))))))    num_blocks times
      out = conv3x3(relu(bn(h)))

  A coupling's s/t network: `out` holds the raw parameters of its
  element-wise transform (for the affine one, raw s and t). With
  `zero_init_output=True` (the default) the last convolution starts at zero,
  so every coupling starts as the identity; the dequantizer's context network
  uses False. The batch norms use global statistics across replicas (see
  ResidualBatchNorm). With a mixed dtype policy (`dtype='mixed_bfloat16'`)
  the network computes in low precision and returns `out` in the variable
  dtype (float32), so the coupling and its log-det stay in float32.
  """

  def __init__(self, out_channels, num_blocks, feature_maps, bn_momentum=0.95,
               zero_init_output=True, **kwargs):
    super().__init__(**kwargs)
    if num_blocks < 0:
      raise ValueError(
          f'`num_blocks` must be >= 0. Received: num_blocks={num_blocks}')
    self.out_channels = out_channels
    self.num_blocks = num_blocks
    self.feature_maps = feature_maps
    self.bn_momentum = bn_momentum
    self.zero_init_output = zero_init_output

  def _batch_norm(self, name):
    return ResidualBatchNorm(self.bn_momentum, name=name, dtype=self.dtype_policy)

  def _conv(self, filters, name, zero_init=False):
    return WeightNormConv2D(filters, zero_init=zero_init, name=name,
                            dtype=self.dtype_policy)

  def build(self, input_shape):
    self.in_conv = self._conv(self.feature_maps, 'in_conv')
    self.blocks = []
    for i in range(self.num_blocks):
      self.blocks.append([
          self._batch_norm(f'block{i}_bn0'),
          self._conv(self.feature_maps, f'block{i}_conv0'),
          self._batch_norm(f'block{i}_bn1'),
          self._conv(self.feature_maps, f'block{i}_conv1'),
      ])
    self.out_bn = self._batch_norm('out_bn')
    self.out_conv = self._conv(self.out_channels, 'out_conv',
                               zero_init=self.zero_init_output)

  def call(self, x, context=None, training=False):
    x = tf.cast(x, self.compute_dtype)
    if context is not None:
      x = tf.concat([x, tf.cast(context, self.compute_dtype)], axis=-1)
    h = self.in_conv(x)
    for bn0, conv0, bn1, conv1 in self.blocks:
      r = conv0(tf.nn.relu(bn0(h, training=training)))
      r = conv1(tf.nn.relu(bn1(r, training=training)))
      h = h + r
    h = self.out_conv(tf.nn.relu(self.out_bn(h, training=training)))
    return tf.cast(h, self.variable_dtype)

  @property
  def _convs(self):
    return ([self.in_conv, self.out_conv] +
            [layer for block in self.blocks for layer in block[1::2]])

  @property
  def gains(self):
    """The weight-normalization gains (the paper's L2-penalized parameters)."""
    return [conv.gain for conv in self._convs]

  def flops_per_example(self):
    """Multiply-adds x 2 of the convolutions for one example, forward pass."""
    return sum(conv.flops_per_example() for conv in self._convs)

  def get_config(self):
    return {**super().get_config(), 'out_channels': self.out_channels,
            'num_blocks': self.num_blocks, 'feature_maps': self.feature_maps,
            'bn_momentum': self.bn_momentum,
            'zero_init_output': self.zero_init_output}
