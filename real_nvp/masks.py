"""Binary coupling masks (paper §3.4) for channels-last tensors [B, H, W, C].

A mask value of 1 marks a dimension the coupling keeps (`x_a`, fed to the s/t
network); 0 marks a dimension it transforms (`x_b`).
"""

import numpy as np

__all__ = ['checkerboard', 'channel_mask']


def checkerboard(height, width, parity=0, dtype='float32'):
  """Spatial checkerboard mask of shape [H, W, 1].

  b[i, j] = 1 where (i + j) % 2 == parity, the same for every channel.
  `parity=1` gives the complementary mask 1 - b.
  """
  if parity not in (0, 1):
    raise ValueError(f'`parity` must be 0 or 1. Received: parity={parity}')
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  mask = ((rows + cols) % 2 == parity).astype(dtype)
  return mask[:, :, None]


def channel_mask(channels, parity=0, dtype='float32'):
  """Channel-wise mask of shape [1, 1, C]: 1 on the first half of the channels.

  `parity=1` selects the second half instead. `channels` must be even.
  """
  if parity not in (0, 1):
    raise ValueError(f'`parity` must be 0 or 1. Received: parity={parity}')
  if channels % 2:
    raise ValueError(
        f'A channel mask needs an even number of channels. Received: '
        f'channels={channels}')
  first_half = np.arange(channels) < channels // 2
  mask = first_half if parity == 0 else ~first_half
  return mask.astype(dtype)[None, None, :]
