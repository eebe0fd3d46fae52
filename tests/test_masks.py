import numpy as np
import pytest

from real_nvp import masks


@pytest.mark.parametrize('height,width', [(4, 4), (3, 5), (8, 8)])
def test_checkerboard_partitions_and_alternates(height, width):
  even, odd = masks.checkerboard(height, width, 0), masks.checkerboard(height, width, 1)
  assert even.shape == (height, width, 1)
  np.testing.assert_array_equal(even + odd, np.ones_like(even))
  assert even[0, 0, 0] == 1 and even[0, 1, 0] == 0 and even[1, 0, 0] == 0
  # Neighbours always differ.
  assert np.all(even[1:] != even[:-1]) and np.all(even[:, 1:] != even[:, :-1])


@pytest.mark.parametrize('channels', [2, 4, 12])
def test_channel_mask_partitions_halves(channels):
  first, second = masks.channel_mask(channels, 0), masks.channel_mask(channels, 1)
  np.testing.assert_array_equal(first + second, np.ones_like(first))
  assert first.sum() == channels // 2
  assert np.all(first[0, 0, :channels // 2] == 1)


def test_bad_arguments():
  with pytest.raises(ValueError, match='even number of channels'):
    masks.channel_mask(3)
  with pytest.raises(ValueError, match='parity'):
    masks.checkerboard(4, 4, parity=2)
