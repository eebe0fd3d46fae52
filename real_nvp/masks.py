"""Binary coupling masks (paper §3.4) for channels-last tensors [B, H, W, C].

A mask value of 1 marks a dimension the coupling keeps (`x_a`, fed to the s/t
network); 0 marks a dimension it transforms (`x_b`).
"""

import numpy as np

__all__ = ['checkerboard']


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

