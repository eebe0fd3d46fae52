"""The bits-back chain's start: the fewest first images whose conventional
codec bytes (image_codec.py) hold a given number of bits. No TensorFlow:
images in, the codec's bytes out.

The codec's size of the first n images is taken to grow with n (the search
assumes it, as any search by halving would). Each probe codes n images
anew, and WebP's exhaustive method on small mosaics costs up to ~40 ms per
1,024 pixels, so the search starts from a guess: the first image's codec
size scaled by zlib's sizes of the next ones (a proxy within ~10 % on
32x32 photographs; tiny images, whose codec files are mostly header, land
it low). Then it gallops from the guess to a bracket (steps of 1, 2, 4, ...)
and halves it: three probes when the guess is right, against six or seven
doubling from one image.
"""

import zlib

from real_nvp import image_codec

__all__ = ['start_images']


def start_images(images, bits):
  """uint8 [N, H, W, C], bits -> (n, codec bytes of images[:n]): the smallest
  n whose bytes hold `bits`; n = N if none does."""
  coded = {}

  def codec(count):
    if count not in coded:
      coded[count] = image_codec.encode(images[:count])
    return coded[count]

  def holds(count):
    return 8 * len(codec(count)) >= bits

  total = len(images)
  if total == 1 or holds(1):
    return 1, codec(1)
  guess = _guess(images, bits, 8 * len(codec(1)))
  low, high, step = 1, guess, 1  # the gallop from the guess to a bracket
  if holds(guess):
    while high - step > low and holds(high - step):
      high, step = high - step, 2 * step
    low = max(low, high - step)
  else:
    low, high = guess, min(total, guess + 1)
    while not holds(high):
      if high == total:
        return total, codec(total)
      low, step = high, 2 * step
      high = min(total, low + step)
  while high - low > 1:  # holds(high), not holds(low)
    middle = (low + high) // 2
    low, high = (low, middle) if holds(middle) else (middle, high)
  return high, codec(high)


def _guess(images, bits, first_bits):
  """The first n >= 2 where first_bits, scaled by zlib's sizes of the first
  n images over the first one's, reaches `bits`; at most N, and at most
  four times bits / first_bits (the gallop goes on from there)."""
  first = len(zlib.compress(images[0].tobytes()))
  proxy, most = first, min(len(images), 4 * (bits // first_bits + 1))
  for count in range(2, most + 1):
    proxy += len(zlib.compress(images[count - 1].tobytes()))
    if first_bits * proxy >= bits * first:
      return count
  return most
