"""The logit transform of the data (paper §4.1), and quantization back to pixels.

Pixels take L levels {0, ..., L-1}; dequantization (dequantization.py)
gives continuous pixels u in [0, L)^D. The flow models

    w = logit(p),   p = alpha + (1 - alpha) * u / L

and this map's log-det is part of the likelihood, so densities and bits/dim
are those of u in the data's own pixel space:

    log|det dw/du| = sum_d [log(1 - alpha) - log L - log p_d - log(1 - p_d)]

u, w: [B, H, W, C]; log-dets: [B].
"""

import math

import numpy as np
import tensorflow as tf

from real_nvp.coding_maps import MonotoneMap
from real_nvp.flow_layer import FlowLayer

__all__ = ['LogitPreprocess', 'quantize']


def quantize(u, levels):
  """Dequantized pixels u -> uint8 pixels floor(u), clipped to [0, L-1]."""
  pixels = tf.clip_by_value(tf.floor(u), 0., levels - 1.)
  return tf.cast(pixels, tf.uint8)


class LogitPreprocess(FlowLayer):
  """u in [0, L) -> logit(alpha + (1 - alpha) u / L); see the module docstring.

  Args:
    levels: number of quantization levels L of the data (256 for 8-bit).
    alpha: the boundary margin, 0 < alpha < 1 (paper: 0.05).
  """

  def __init__(self, levels=256, alpha=0.05, **kwargs):
    super().__init__(**kwargs)
    if levels < 2:
      raise ValueError(f'`levels` must be >= 2. Received: levels={levels}')
    if not 0. < alpha < 1.:
      raise ValueError(f'`alpha` must be in (0, 1). Received: alpha={alpha}')
    self.levels = levels
    self.alpha = alpha
    # The per-dimension log-det term that does not depend on u.
    self._log_det_offset = math.log1p(-alpha) - math.log(levels)

  def call(self, u, training=False):
    del training  # Same map in both modes.
    p = self.alpha + (1. - self.alpha) * u / self.levels
    log_p, log_1mp = tf.math.log(p), tf.math.log1p(-p)
    w = log_p - log_1mp
    log_det = self._log_det_offset - log_p - log_1mp
    return w, tf.reduce_sum(log_det, axis=[1, 2, 3])

  def decode(self, w, training=False):
    del training  # Same map in both modes.
    log_p, log_1mp = -tf.nn.softplus(-w), -tf.nn.softplus(w)
    u = (tf.sigmoid(w) - self.alpha) / (1. - self.alpha) * self.levels
    log_det = log_p + log_1mp - self._log_det_offset
    return u, tf.reduce_sum(log_det, axis=[1, 2, 3])

  def coding_map(self, u, context=None, tensors=None):
    """w = logit(alpha + (1 - alpha) u / L) on [0, L), in float64. w is
    infinite at u = L: the latent side is cut at logit(1 - 2^-40), far
    beyond any cell below L at the grids coding uses."""
    del u, context, tensors
    alpha, levels = self.alpha, self.levels

    def forward(u):
      p = alpha + (1. - alpha) * u / levels
      return np.log(p) - np.log1p(-p)

    def inverse(w):
      return (1. / (1. + np.exp(-w)) - alpha) / (1. - alpha) * levels

    return MonotoneMap(forward, inverse, 0., float(levels), float(forward(0.)),
                       float(np.log(2. ** 40 - 1.)))

  def get_config(self):
    return {**super().get_config(), 'levels': self.levels, 'alpha': self.alpha}
