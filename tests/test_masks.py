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


def test_bad_arguments():
  with pytest.raises(ValueError, match='parity'):
    masks.checkerboard(4, 4, parity=2)
