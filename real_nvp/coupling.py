"""Affine coupling layer with a checkerboard or channel-wise mask (paper §3.2-3.4).

Data -> latent (the paper's f), with mask b (1 = kept):

    y = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x))
    log|det dy/dx| = sum((1 - b) * s(b * x))

Latent -> data:  x = b * y + (1 - b) * (y - t(b * y)) * exp(-s(b * y)).
x, y: [B, H, W, C]; log-dets: [B].

For the channel mask the s/t network sees only the kept half of the channels
and predicts s and t for the other half, which is the same map as the masked
form above without the zero channels.
"""

import tensorflow as tf

from real_nvp import masks
from real_nvp.flow_layer import FlowLayer
from real_nvp.st_network import STNetwork

__all__ = ['AffineCoupling', 'MASK_TYPES']

MASK_TYPES = ('checkerboard', 'channel')


class AffineCoupling(FlowLayer):
  """Affine coupling; see the module docstring for the maps and shapes.

  Args:
    mask_type: 'checkerboard' or 'channel'.
    parity: 0 or 1; consecutive couplings alternate it (b <-> 1 - b).
    num_blocks, feature_maps: size of the residual s/t network.
    bn_momentum: momentum of the s/t network's batch norms.
    st_dtype: dtype policy of the s/t network (e.g. 'mixed_bfloat16');
      default: the layer's own. The coupling itself computes in its own dtype.
  """

  def __init__(self, mask_type, parity, num_blocks, feature_maps,
               bn_momentum=0.95, st_dtype=None, **kwargs):
    super().__init__(**kwargs)
    if mask_type not in MASK_TYPES:
      raise ValueError(f'`mask_type` must be one of {MASK_TYPES}. '
                       f'Received: mask_type={mask_type!r}')
    if parity not in (0, 1):
      raise ValueError(f'`parity` must be 0 or 1. Received: parity={parity}')
    self.mask_type = mask_type
    self.parity = parity
    self.num_blocks = num_blocks
    self.feature_maps = feature_maps
    self.bn_momentum = bn_momentum
    self.st_dtype = st_dtype

  def build(self, input_shape):
    height, width, channels = input_shape[1:]
    if self.mask_type == 'checkerboard':
      self._mask = tf.constant(
          masks.checkerboard(height, width, self.parity, self.compute_dtype))
      out_channels = channels
    else:
      if channels % 2:
        raise ValueError(
            f'{self.name}: a channel-mask coupling needs an even number of '
            f'channels. Received input shape {tuple(input_shape)}')
      out_channels = channels // 2
    self.st_net = STNetwork(
        out_channels, self.num_blocks, self.feature_maps, self.bn_momentum,
        name='st_net',
        dtype=self.st_dtype or self.dtype_policy)

  def _split_channels(self, x):
    first, second = tf.split(x, 2, axis=-1)
    return (first, second) if self.parity == 0 else (second, first)

  def _merge_channels(self, kept, changed):
    parts = [kept, changed] if self.parity == 0 else [changed, kept]
    return tf.concat(parts, axis=-1)

  def _log_scale_and_shift(self, kept, training):
    """(s, t) from the kept dimensions; zero on the kept dimensions."""
    if self.mask_type == 'channel':
      return self.st_net(kept, training=training)
    mask_channel = tf.broadcast_to(
        self._mask, tf.concat([tf.shape(kept)[:-1], [1]], axis=0))
    log_scale, shift = self.st_net(
        tf.concat([kept, mask_channel], axis=-1), training=training)
    return log_scale * (1. - self._mask), shift * (1. - self._mask)

  def call(self, x, training=False):
    if self.mask_type == 'channel':
      kept, changed = self._split_channels(x)
      log_scale, shift = self._log_scale_and_shift(kept, training)
      y = self._merge_channels(kept, changed * tf.exp(log_scale) + shift)
    else:
      log_scale, shift = self._log_scale_and_shift(x * self._mask, training)
      y = x * tf.exp(log_scale) + shift
    return y, tf.reduce_sum(log_scale, axis=[1, 2, 3])

  def decode(self, y):
    self._check_built()
    if self.mask_type == 'channel':
      kept, changed = self._split_channels(y)
      log_scale, shift = self._log_scale_and_shift(kept, training=False)
      x = self._merge_channels(kept, (changed - shift) * tf.exp(-log_scale))
    else:
      log_scale, shift = self._log_scale_and_shift(y * self._mask, False)
      x = (y - shift) * tf.exp(-log_scale)
    return x, -tf.reduce_sum(log_scale, axis=[1, 2, 3])

  @property
  def gains(self):
    return self.st_net.gains

  def get_config(self):
    return {**super().get_config(), 'mask_type': self.mask_type,
            'parity': self.parity, 'num_blocks': self.num_blocks,
            'feature_maps': self.feature_maps, 'bn_momentum': self.bn_momentum,
            'st_dtype': self.st_dtype}
