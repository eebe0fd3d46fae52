"""The compressed file, pure bytes: its header and payload (no TensorFlow).

Every byte counts against bits/dim, so the header is binary (about 25
bytes): the magic b'RZ', the format version, the three precisions packed
in 2 bytes, 4 bytes of SHA-256 over the model's config and weights, 1 byte
of SHA-256 over the platform (TensorFlow version, CPU kernels, device),
LEB128 varints of the number of images, H, W, C, the batch size, the
number of images in the chain's start and its byte length, and the two
numbers of the ramp that sizes the bits-back batches (`Ramp`: the decoder
replays it, so the header does not grow with the number of batches); 4
bytes of SHA-256 over the images. Then the payload: the ANS stack's
little-endian uint32 words, or, when every image is in the chain's start,
its bytes (compression.py).
"""

import dataclasses
import hashlib
import json

import numpy as np

__all__ = ['Precisions', 'Ramp', 'Header', 'CompressedFileError', 'read_header', 'MAGIC',
           'FORMAT_VERSION', 'platform_fingerprint', 'images_checksum', 'varints',
           'read_varints']

MAGIC = b'RZ'
FORMAT_VERSION = 8
MAX_DIMS = 2 ** 28  # H * W * C of one image, and of one batch


class CompressedFileError(ValueError):
  """A file that this model cannot decode (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Precisions:
  """Bits of the fixed-point grids (stored in the file's header).

  dequantization: the noise u on the grid 2^-k_u (pixel units); 0: chosen
    from the model's dequantization (Compressor).
  latent: every value of the model's flow after the preprocessing on the
    grid 2^-k; 0: chosen from the model's levels (Compressor).
  prior_bins: the prior's bins are 2^-prior_bins wide.
  `noise` (derived): the variational dequantizer's grid.
  """
  dequantization: int = 0
  latent: int = 0
  prior_bins: int = 6

  def __post_init__(self):
    for name, low, high in (('dequantization', 0, 24), ('latent', 0, 40),
                            ('prior_bins', 1, 10)):
      value = getattr(self, name)
      if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f'--{name}_precision={value!r}: must be an integer in '
                         f'[{low}, {high}].')
    if self.latent and self.latent < self.prior_bins:
      raise ValueError(f'--latent_precision={self.latent} is coarser than the prior\'s '
                       f'bins (--prior_bins_precision={self.prior_bins}): raise the '
                       'first, lower the second, or pass --latent_precision=0 (chosen '
                       'from the model).')

  @property
  def noise(self):
    """The grid of the variational dequantizer's ε and v: its sigmoid, of
    slope at most 1/4, maps a cell of frac (2^-k_u) onto at least 64 points
    of 2^-(k_u + 4). The latent grid, finer, codes no shorter, but every
    image would take more bits back before it gives any (Ramp; measured:
    docs/compression.md)."""
    return max(self.dequantization + 4, self.prior_bins)


def platform_fingerprint(platform):
  """1 byte of SHA-256 over a JSON-able description of the platform."""
  return hashlib.sha256(json.dumps(platform, sort_keys=True).encode()).digest()[:1]


def images_checksum(images):
  """4 bytes of SHA-256 over the images' bytes."""
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).digest()[:4]


@dataclasses.dataclass(frozen=True)
class Ramp:
  """The sizes of the bits-back batches, a rule both sides replay.

  A batch takes back up to `take` bits an image before it gives any, and
  leaves the stack about `gain` bits an image longer. So after the chain's
  start of S bits and `done` images, the stack is taken to hold
  S + done·gain bits, and the next batch holds

      min(B, images left, max(1, ⌊(S + done·gain) / take⌋))

  images: 1, 1, 2, ... growing with the stack, then B. The encoder chooses
  `take` and `gain` (compression.py) and codes again with a slower ramp if
  a batch finds fewer bits than the rule assumed.
  """
  take: int = 0
  gain: int = 0

  def sizes(self, count, batch_size, start_bits, most_batches=None):
    """The sizes of the batches of `count` images; ValueError past
    `most_batches` batches (a damaged header), found without listing them."""
    runs, done, take = [], 0, max(1, self.take)
    while done < count:  # a run of equal sizes an iteration: at most B + 2
      size = min(batch_size, max(1, (start_bits + done * self.gain) // take))
      if size >= count - done:
        runs.append((count - done, 1))
        break
      if size == batch_size or not self.gain:
        repeats = (count - done) // size
      else:  # the size holds while start_bits + done·gain < (size + 1)·take
        until = -(-((size + 1) * take - start_bits) // self.gain)
        repeats = min(max(1, -(-(until - done) // size)), (count - done) // size)
      runs.append((size, repeats))
      done += size * repeats
    if most_batches is not None and sum(n for _, n in runs) > most_batches:
      raise ValueError('more batches than the file can hold')
    return tuple(size for size, repeats in runs for _ in range(repeats))


@dataclasses.dataclass
class Header:
  """The file's header (see the module docstring)."""
  precisions: Precisions
  model_fingerprint: bytes
  platform_fingerprint: bytes
  num_images: int
  image_shape: tuple
  batch_size: int
  start_images: int  # the first images, coded by image_codec.py
  start_bytes: int
  ramp: Ramp  # sizes the bits-back batches after the start
  images_checksum: bytes

  def batches(self, most_batches=None):
    """The bits-back batches' sizes, in coding order."""
    return self.ramp.sizes(self.num_images - self.start_images, self.batch_size,
                           8 * self.start_bytes, most_batches)

  def to_bytes(self):
    """The header's bytes (the payload follows them)."""
    p = self.precisions
    packed = p.dequantization | p.latent << 5 | p.prior_bins << 11  # 5 + 6 + 4 bits
    return (MAGIC + bytes([FORMAT_VERSION]) + packed.to_bytes(2, 'little') +
            self.model_fingerprint + self.platform_fingerprint +
            varints([self.num_images, *self.image_shape, self.batch_size,
                     self.start_images, self.start_bytes, self.ramp.take,
                     self.ramp.gain]) +
            self.images_checksum)


def read_header(data):
  """(header, payload bytes) of a compressed file; CompressedFileError if it
  is not one, or its header is damaged or disagrees with its payload."""
  if not data.startswith(MAGIC):
    raise CompressedFileError('Not a real-nvp compressed file (it does not start '
                              f'with {MAGIC!r}).')
  position = len(MAGIC)
  try:
    version = data[position]
    if version != FORMAT_VERSION:
      raise CompressedFileError(f'Format version {version} is not {FORMAT_VERSION}, '
                                'the one this code reads.')
    packed = int.from_bytes(data[position + 1:position + 3], 'little')
    precisions = Precisions(packed & 31, packed >> 5 & 63, packed >> 11 & 15)
    position += 3
    model, platform = data[position:position + 4], data[position + 4:position + 5]
    values, position = read_varints(data, position + 5, 9)
    checksum = data[position:position + 4]
  except (ValueError, IndexError) as error:
    if isinstance(error, CompressedFileError):
      raise
    raise CompressedFileError('The file\'s header is damaged or truncated.') from None
  num_images, shape, batch_size, start_images, start_bytes = (
      values[0], tuple(values[1:4]), values[4], values[5], values[6])
  payload = data[position + 4:]
  header = Header(precisions, model, platform, num_images, shape, batch_size,
                  start_images, start_bytes, Ramp(values[7], values[8]), checksum)
  bits_back = start_images < num_images
  if (len(checksum) != 4 or min(shape) < 1 or
      batch_size * int(np.prod(shape)) > MAX_DIMS or
      not 1 <= start_images <= num_images or batch_size < 1 or
      (bits_back and header.ramp.take < 1) or start_bytes > len(payload) + 4):
    raise CompressedFileError('The file\'s header is damaged or truncated (its '
                              'counts do not add up).')
  if bits_back:
    try:  # every batch leaves words on the stack: no more batches than bits
      header.batches(most_batches=8 * len(data) + 64)
    except ValueError:
      raise CompressedFileError('The file\'s header is damaged (more batches than '
                                'the file has bits).') from None
  if (bits_back and len(payload) % 4) or (not bits_back and len(payload) != start_bytes):
    raise CompressedFileError('The file is truncated or has bytes appended.')
  return header, payload


def varints(values):
  """LEB128 bytes of non-negative integers."""
  out = bytearray()
  for value in values:
    while True:
      out.append((value & 0x7f) | (0x80 if value > 0x7f else 0))
      value >>= 7
      if not value:
        break
  return bytes(out)


def read_varints(data, position, count):
  """(`count` integers, the position after them); IndexError if truncated,
  ValueError past 64 bits."""
  values = []
  for _ in range(count):
    value, shift = 0, 0
    while True:
      if shift > 63:
        raise ValueError('a varint longer than 64 bits')
      byte = data[position]
      position += 1
      value |= (byte & 0x7f) << shift
      shift += 7
      if not byte & 0x80:
        break
    values.append(value)
  return values, position
