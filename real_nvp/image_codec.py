"""Images in a conventional lossless codec: WebP lossless (libwebp through
Pillow), the bits-back chain's start (compression.py). Pure bytes and numpy.

uint8 images [N, H, W, C] are laid out as near-square mosaics of at most
`MAX_PER_MOSAIC` images (WebP's sides stay below 16384 pixels), one WebP
file each, each behind its byte length (LEB128). Three channels are coded
as RGB; any other number of channels as gray planes side by side (WebP
stores gray as RGB with the subtract-green transform, at little cost).
"""

import io
import math

import numpy as np

from real_nvp.compressed_file import read_varints, varints

__all__ = ['encode', 'decode', 'mosaic', 'CodecError']

MAX_PER_MOSAIC = 4096
_MAX_SIDE = 16383
# libwebp's method 6 at quality 100 searches exhaustively: on 1,184 32x32 photo
# patches the same size as method 5 (within 0.03 %) 12 times slower, on one
# 8x8 digit 61 bytes against 95. So 6 up to this many pixels, then 5.
_EXHAUSTIVE_PIXELS = 2 ** 12


class CodecError(ValueError):
  """Bytes that do not decode to the expected images."""


def _planes(images):
  """[N, H, W, C] -> [N, H', W', 3]: RGB as is, else channels side by side, gray."""
  if images.shape[-1] == 3:
    return images
  n, h, w, c = images.shape
  gray = images.transpose(0, 1, 3, 2).reshape(n, h, c * w)
  return np.repeat(gray[..., None], 3, axis=-1)


def _unplanes(planes, channels):
  if channels == 3:
    return planes
  n, h, cw, _ = planes.shape
  return planes[..., 0].reshape(n, h, channels, cw // channels).transpose(0, 1, 3, 2)


def _per_mosaic(height, width):
  return max(1, min(MAX_PER_MOSAIC, (_MAX_SIDE // height) * (_MAX_SIDE // width)))


def _grid(count, height, width):
  columns = min(math.ceil(math.sqrt(count)), _MAX_SIDE // width)
  return columns, math.ceil(count / columns)


def mosaic(images):
  """uint8 [N, H, W, C] -> [rows H, columns W, C]: the images in a near-square
  grid, row by row, the cells after the last one zero."""
  count, h, w, channels = images.shape
  columns, rows = _grid(count, h, w)
  out = np.zeros((rows * h, columns * w, channels), np.uint8)
  for index, image in enumerate(images):
    r, c = divmod(index, columns)
    out[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
  return out


def _encode_mosaic(planes):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  grid = mosaic(planes)
  method = 6 if grid.shape[0] * grid.shape[1] <= _EXHAUSTIVE_PIXELS else 5
  Image.fromarray(grid, 'RGB').save(buffer, 'WEBP', lossless=True, quality=100,
                                    method=method, exact=True)
  return buffer.getvalue()


def _decode_mosaic(data, count, h, w):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  columns, rows = _grid(count, h, w)
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format != 'WEBP':
        raise CodecError('not a WebP image')
      mosaic = np.asarray(image.convert('RGB'))
  except (OSError, SyntaxError) as error:
    raise CodecError(f'the WebP part does not decode ({error})') from None
  if mosaic.shape != (rows * h, columns * w, 3):
    raise CodecError('the WebP part holds another shape')
  return np.stack([mosaic[r * h:(r + 1) * h, c * w:(c + 1) * w]
                   for r, c in (divmod(i, columns) for i in range(count))])


def encode(images):
  """uint8 [N, H, W, C] -> bytes."""
  planes = _planes(np.asarray(images, np.uint8))
  step = _per_mosaic(*planes.shape[1:3])
  out = bytearray()
  for start in range(0, len(planes), step):
    blob = _encode_mosaic(planes[start:start + step])
    out += varints([len(blob)]) + blob
  return bytes(out)


def decode(data, count, image_shape):
  """Inverse of `encode` for `count` images of `image_shape` (CodecError if
  the bytes are not that)."""
  h, w, c = image_shape
  plane_shape = (h, w) if c == 3 else (h, w * c)
  step = _per_mosaic(*plane_shape)
  position, parts = 0, []
  for start in range(0, count, step):
    try:
      (length,), position = read_varints(data, position, 1)
    except (IndexError, ValueError):
      raise CodecError('the WebP part\'s length is damaged') from None
    if position + length > len(data):
      raise CodecError('the WebP part is truncated')
    parts.append(_decode_mosaic(data[position:position + length],
                                min(step, count - start), *plane_shape))
    position += length
  if position != len(data):
    raise CodecError('bytes follow the WebP part')
  return _unplanes(np.concatenate(parts) if parts else np.zeros((0, *plane_shape, 3),
                                                                 np.uint8), c)
