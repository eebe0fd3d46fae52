"""How a coupling splits its input (paper §3.4): the partitions x = (x_a, x_b).

A partition says which dimensions a coupling keeps (x_a, seen by the s/t
network) and which it transforms (x_b), independently of the element-wise
transform applied to x_b (see `transforms.py`). Channels-last tensors
[B, H, W, C].

- `CheckerboardPartition(parity)`: spatial mask b[i, j] = 1 where
  (i + j) % 2 == parity (kept), the same for every channel. The network sees
  b * x and the mask itself as an extra channel; its outputs are zeroed on the
  kept dimensions, so the transform leaves them unchanged.
- `ChannelPartition(parity)`: the first half of the channels is kept for
  parity 0, the second half for parity 1. The network sees the kept half and
  predicts parameters for the other half only; C must be even.

Both are the masked form y = b * x + (1 - b) * T(x; net(b * x)).
"""

import numpy as np
import tensorflow as tf

from real_nvp import masks

__all__ = ['CheckerboardPartition', 'ChannelPartition', 'PARTITIONS',
           'make_partition']


class _Partition:
  """What both partitions share: the parity (which side is kept)."""

  def __init__(self, parity):
    if parity not in (0, 1):
      raise ValueError(f'`parity` must be 0 or 1. Received: parity={parity}')
    self.parity = parity
    self._kept_masks = {}

  def kept_mask(self, event_shape):
    """bool [H, W, C]: the kept dimensions (read-only; worked out once per
    shape: the lossless coder asks for it at every layer of every batch)."""
    event_shape = tuple(event_shape)
    if event_shape not in self._kept_masks:
      mask = self._kept(event_shape)
      mask.setflags(write=False)
      self._kept_masks[event_shape] = mask
    return self._kept_masks[event_shape]


class CheckerboardPartition(_Partition):
  """Spatial checkerboard; see the module docstring."""

  name = 'checkerboard'
  _mask = None  # [H, W, 1], set by build

  def build(self, input_shape, dtype):
    height, width = input_shape[1:3]
    self._mask = tf.constant(masks.checkerboard(height, width, self.parity, dtype))
    self._kept_masks = {}

  def _kept(self, event_shape):
    return np.broadcast_to(self._mask.numpy() > 0.5, event_shape).copy()

  @property
  def mask(self):
    """[H, W, 1], 1 on the kept dimensions."""
    return self._mask

  def transformed_channels(self, channels):
    return channels

  def conditioner_input(self, x):
    mask_channel = tf.broadcast_to(
        self._mask, tf.concat([tf.shape(x)[:-1], [1]], axis=0))
    return tf.concat([x * self._mask, mask_channel], axis=-1)

  def restrict(self, params):
    """Network outputs, zeroed on the kept dimensions."""
    return params * (1. - self._mask)

  def transformed_part(self, x):
    return x

  def merge(self, x, transformed):
    del x  # The restricted transform is the identity on the kept dimensions.
    return transformed


class ChannelPartition(_Partition):
  """Halves of the channels; see the module docstring."""

  name = 'channel'

  def build(self, input_shape, dtype):
    del dtype
    if input_shape[-1] % 2:
      raise ValueError(
          'A channel-mask coupling needs an even number of channels. Received '
          f'input shape {tuple(input_shape)}')

  def transformed_channels(self, channels):
    return channels // 2

  def _kept(self, event_shape):
    channels = event_shape[-1]
    first = np.arange(channels) < channels // 2
    return np.broadcast_to(first if self.parity == 0 else ~first, event_shape).copy()

  def _split(self, x):
    first, second = tf.split(x, 2, axis=-1)
    return (first, second) if self.parity == 0 else (second, first)

  def conditioner_input(self, x):
    return self._split(x)[0]

  def restrict(self, params):
    return params

  def transformed_part(self, x):
    return self._split(x)[1]

  def merge(self, x, transformed):
    kept = self._split(x)[0]
    parts = [kept, transformed] if self.parity == 0 else [transformed, kept]
    return tf.concat(parts, axis=-1)


PARTITIONS = {cls.name: cls for cls in (CheckerboardPartition, ChannelPartition)}


def make_partition(mask_type, parity):
  if mask_type not in PARTITIONS:
    raise ValueError(f'`mask_type` must be one of {tuple(PARTITIONS)}. '
                     f'Received: mask_type={mask_type!r}')
  return PARTITIONS[mask_type](parity)
