"""The s/t network of an affine coupling: a weight-normalized residual CNN.

Paper §3.4 and §4.1: s and t are deep convolutional ResNets with rectifiers,
batch normalization and weight normalization; s is `scale * tanh(raw_s)` with
a learned per-channel scale, t is affine.
"""

import keras
import tensorflow as tf

__all__ = ['WeightNormConv2D', 'STNetwork']


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
    self.direction = self.add_weight(
        name='direction',
        shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
        initializer=keras.initializers.HeNormal())
    self.gain = self.add_weight(
        name='gain', shape=(self.filters,),
        initializer='zeros' if self.zero_init else 'ones')
    self.bias = self.add_weight(
        name='bias', shape=(self.filters,), initializer='zeros')

  def call(self, x):
    norm = tf.sqrt(tf.reduce_sum(tf.square(self.direction), axis=[0, 1, 2]))
    kernel = self.direction * (self.gain / norm)
    return tf.nn.bias_add(
        tf.nn.conv2d(x, kernel, strides=1, padding='SAME'), self.bias)

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'kernel_size': self.kernel_size, 'zero_init': self.zero_init}


class STNetwork(keras.layers.Layer):
  """Residual CNN returning (s, t), each [B, H, W, out_channels].

      h = conv3x3(x)
      h = h + conv3x3(relu(bn(conv3x3(relu(bn(h))))))    num_blocks times
      raw_s, t = split(conv3x3(relu(bn(h))))
      s = scale * tanh(raw_s)

  The last convolution is zero-initialized, so s = t = 0 and every coupling
  starts as the identity. `synchronized_batch_norm` makes the batch-norm
  statistics global across replicas (needed for replica-count-independent
  training under tf.distribute). With a mixed dtype policy (`dtype=
  'mixed_bfloat16'`) the network computes in low precision and returns s and
  t in the variable dtype (float32), so the coupling and its log-det stay in
  float32.
  """

  def __init__(self, out_channels, num_blocks, feature_maps, bn_momentum=0.95,
               synchronized_batch_norm=False, **kwargs):
    super().__init__(**kwargs)
    if num_blocks < 0:
      raise ValueError(
          f'`num_blocks` must be >= 0. Received: num_blocks={num_blocks}')
    self.out_channels = out_channels
    self.num_blocks = num_blocks
    self.feature_maps = feature_maps
    self.bn_momentum = bn_momentum
    self.synchronized_batch_norm = synchronized_batch_norm

  def _batch_norm(self, name):
    return keras.layers.BatchNormalization(
        momentum=self.bn_momentum, epsilon=1e-4,
        synchronized=self.synchronized_batch_norm, name=name,
        dtype=self.dtype_policy)

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
    self.out_conv = self._conv(2 * self.out_channels, 'out_conv', zero_init=True)
    self.log_scale_factor = self.add_weight(
        name='log_scale_factor', shape=(self.out_channels,),
        initializer='ones')

  def call(self, x, training=False):
    h = self.in_conv(tf.cast(x, self.compute_dtype))
    for bn0, conv0, bn1, conv1 in self.blocks:
      r = conv0(tf.nn.relu(bn0(h, training=training)))
      r = conv1(tf.nn.relu(bn1(r, training=training)))
      h = h + r
    h = self.out_conv(tf.nn.relu(self.out_bn(h, training=training)))
    raw_s, t = tf.split(tf.cast(h, self.variable_dtype), 2, axis=-1)
    return tf.convert_to_tensor(self.log_scale_factor) * tf.tanh(raw_s), t

  @property
  def gains(self):
    """The weight-normalization gains (the paper's L2-penalized parameters)."""
    convs = [self.in_conv, self.out_conv]
    convs += [layer for block in self.blocks for layer in block
              if isinstance(layer, WeightNormConv2D)]
    return [conv.gain for conv in convs]

  def get_config(self):
    return {**super().get_config(), 'out_channels': self.out_channels,
            'num_blocks': self.num_blocks, 'feature_maps': self.feature_maps,
            'bn_momentum': self.bn_momentum,
            'synchronized_batch_norm': self.synchronized_batch_norm}
