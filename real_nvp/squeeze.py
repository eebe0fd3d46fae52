"""Squeeze (paper §3.6): [H, W, C] -> [H/2, W/2, 4C] by 2x2 space-to-depth.

Data -> latent: y[b, i, j, (2*di + dj) * C + c] = x[b, 2i + di, 2j + dj, c].
The channel halves of y hold the top and the bottom rows of each 2x2 patch,
so a channel mask after the squeeze splits every checkerboard colour in two
(not redundant with the checkerboard masks before it). log|det| = 0.
"""

import tensorflow as tf

from real_nvp.coding_maps import Permutation
from real_nvp.flow_layer import FlowLayer

__all__ = ['Squeeze']


class Squeeze(FlowLayer):
  """2x2 space-to-depth; volume preserving. See the module docstring."""

  def build(self, input_shape):
    height, width = input_shape[1:3]
    if height % 2 or width % 2:
      raise ValueError(
          f'{self.name}: squeezing needs an even height and width. Received '
          f'input shape {tuple(input_shape)}')

  def call(self, x, training=False):
    del training  # Same map in both modes.
    return tf.nn.space_to_depth(x, 2), tf.zeros(tf.shape(x)[:1], x.dtype)

  def decode(self, y, training=False):
    del training
    return tf.nn.depth_to_space(y, 2), tf.zeros(tf.shape(y)[:1], y.dtype)

  def encoded_context(self, context):
    """A context is squeezed along with the data."""
    return self.call(context)[0]

  def decoded_context(self, context):
    return self.decode(context)[0]

  def permutation(self):
    """The squeeze moves values only: space_to_depth of numpy [B, H, W, C]."""
    return Permutation(space_to_depth, depth_to_space)

  def encoded_shape(self, data_shape):
    height, width, channels = data_shape
    return [_div(height, 2), _div(width, 2), _mul(channels, 4)]

  def decoded_shape(self, latent_shape):
    height, width, channels = latent_shape
    return [_mul(height, 2), _mul(width, 2), _div(channels, 4)]


def _div(size, factor):
  return None if size is None else size // factor


def _mul(size, factor):
  return None if size is None else size * factor


def space_to_depth(x):
  """tf.nn.space_to_depth(x, 2) of a numpy array (any dtype, Python ints too)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      b, h // 2, w // 2, 4 * c)


def depth_to_space(x):
  """tf.nn.depth_to_space(x, 2) of a numpy array."""
  b, h, w, c = x.shape
  return x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5).reshape(
      b, 2 * h, 2 * w, c // 4)
