"""The compressed file, pure bytes: its header and payload (no TensorFlow).

Every byte counts against bits/dim, so the header is binary (20 bytes for
180 8x8 images): the magic b'RZ', the format version, the three precisions
packed in 2 bytes, 4 bytes of SHA-256 over the model's config and weights,
1 byte of SHA-256 over the platform (TensorFlow version, CPU kernels,
device), LEB128 varints of the number of images, H, W, C and the chain's
restarts after image 0 (their count and gaps), 4 bytes of SHA-256 over the
images; then the ANS payload, little-endian uint32 words.
"""

import dataclasses
import hashlib
import json

import numpy as np

__all__ = ['Precisions', 'Header', 'CompressedFileError', 'read_header', 'MAGIC',
           'FORMAT_VERSION', 'platform_fingerprint', 'images_checksum']

MAGIC = b'RZ'
FORMAT_VERSION = 1


class CompressedFileError(ValueError):
  """A file that this model cannot decode (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Precisions:
  """Bits of the fixed-point grids (stored in the file's header).

  dequantization: u on the grid 2^-k_u (pixel units): the precision at which
    the dequantization noise is taken back.
  layer: bits each element-wise coding step adds (cells of about 2^layer
    latent points: the O(2^-layer) loss per step).
  prior_bins: the prior's bins are 2^-prior_bins wide.
  """
  dequantization: int = 16
  layer: int = 16
  prior_bins: int = 6

  def __post_init__(self):
    for name, low, high in (('dequantization', 1, 30), ('layer', 4, 30),
                            ('prior_bins', 1, 10)):
      value = getattr(self, name)
      if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f'--{name}_precision={value!r}: must be an integer in '
                         f'[{low}, {high}].')


def platform_fingerprint(platform):
  """1 byte of SHA-256 over a JSON-able description of the platform."""
  return hashlib.sha256(json.dumps(platform, sort_keys=True).encode()).digest()[:1]


def images_checksum(images):
  """4 bytes of SHA-256 over the images' bytes."""
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).digest()[:4]


@dataclasses.dataclass
class Header:
  """The file's header (see the module docstring), 20-odd bytes."""
  precisions: Precisions
  model_fingerprint: bytes
  platform_fingerprint: bytes
  num_images: int
  image_shape: tuple
  images_checksum: bytes
  chain_starts: tuple

  def to_bytes(self):
    """The header's bytes (the payload follows them)."""
    p = self.precisions
    packed = p.dequantization | p.layer << 5 | p.prior_bins << 10  # 5 + 5 + 4 bits
    gaps = np.diff(self.chain_starts) - 1  # the first start is image 0
    return (MAGIC + bytes([FORMAT_VERSION]) + packed.to_bytes(2, 'little') +
            self.model_fingerprint + self.platform_fingerprint +
            _varints([self.num_images, *self.image_shape, len(gaps), *gaps]) +
            self.images_checksum)


def read_header(data):
  """(header, payload bytes) of a compressed file; CompressedFileError if it
  is not one or its header is damaged."""
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
    precisions = Precisions(packed & 31, packed >> 5 & 31, packed >> 10 & 15)
    position += 3
    model, platform = data[position:position + 4], data[position + 4:position + 5]
    values, position = _read_varints(data, position + 5, 5)
    gaps, position = _read_varints(data, position, values[4])
    checksum = data[position:position + 4]
    starts = np.cumsum([0] + [g + 1 for g in gaps])
    header = Header(precisions, model, platform, values[0], tuple(values[1:4]),
                     checksum, tuple(int(s) for s in starts))
  except (ValueError, IndexError) as error:
    if isinstance(error, CompressedFileError):
      raise
    raise CompressedFileError('The file\'s header is damaged or truncated.') from None
  payload = data[position + 4:]
  if len(checksum) != 4 or len(payload) % 4:
    raise CompressedFileError('The file is truncated (its payload is not whole '
                              '32-bit words).')
  return header, payload


def _varints(values):
  out = bytearray()
  for value in values:
    while True:
      out.append((value & 0x7f) | (0x80 if value > 0x7f else 0))
      value >>= 7
      if not value:
        break
  return bytes(out)


def _read_varints(data, position, count):
  values = []
  for _ in range(count):
    value, shift = 0, 0
    while True:
      byte = data[position]
      position += 1
      value |= (byte & 0x7f) << shift
      shift += 7
      if not byte & 0x80:
        break
    values.append(value)
  return values, position
