"""Element-wise invertible transforms of a coupling's changed dimensions.

A transform turns the s/t network's raw outputs into its parameters and maps
x_b -> y_b element-wise; the coupling (coupling.py) decides which dimensions
are x_b (partition.py). x, y, raw parameters: [B, H, W, c]; log-dets: [B].

To add a transform: subclass `ElementwiseTransform`, set `num_params` (raw
network channels per transformed channel), define `build(channels)`,
`forward(x, raw) -> (y, log|det dy/dx|)` and
`inverse(y, raw) -> (x, log|det dx/dy|)` (raw: [B, H, W, num_params * c]),
and register it in `TRANSFORMS`. Lossless coding (coding_maps.py) asks the
transform for `affine_parameters(raw) -> (s, t)`, y = x * exp(s) + t.
"""

import keras
import tensorflow as tf

__all__ = ['ElementwiseTransform', 'AffineTransform', 'TRANSFORMS']


class ElementwiseTransform(keras.layers.Layer):
  """Base class of the transforms; the contract is in the module docstring.
  `build(channels)` creates the transform's own weights."""

  num_params = None


class AffineTransform(ElementwiseTransform):
  """y = x * exp(s) + t, the paper's affine coupling (eq. 7-9, §3.4).

      raw = [raw_s, t],   s = scale * tanh(raw_s)
      log|det dy/dx| = sum(s)

  `scale` is a learned per-channel factor (starting at 1): tanh bounds s so
  that exp(s) cannot overflow, the factor keeps the range learnable.
  """

  num_params = 2

  def build(self, channels):
    self.log_scale_factor = self.add_weight(
        name='log_scale_factor', shape=(channels,), initializer='ones')

  def _log_scale_and_shift(self, raw):
    raw_s, shift = tf.split(raw, 2, axis=-1)
    return self.log_scale_factor * tf.tanh(raw_s), shift

  def affine_parameters(self, raw):
    """(s, t) of y = x * exp(s) + t: lossless coding treats the transform as
    this element-wise affine map (coding_maps.py)."""
    return self._log_scale_and_shift(raw)

  def forward(self, x, raw):
    log_scale, shift = self._log_scale_and_shift(raw)
    return x * tf.exp(log_scale) + shift, tf.reduce_sum(log_scale, axis=[1, 2, 3])

  def inverse(self, y, raw):
    log_scale, shift = self._log_scale_and_shift(raw)
    return (y - shift) * tf.exp(-log_scale), -tf.reduce_sum(log_scale, axis=[1, 2, 3])


TRANSFORMS = {'affine': AffineTransform}
