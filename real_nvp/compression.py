"""Lossless compression of uint8 images with a trained RealNVP: a file of about
the model's bits/dim (bits-back coding of the dequantization, local bits-back
coding through every layer; Ho, Lohn & Abbeel, NeurIPS 2019).

For each image x, one at a time (so that every network sees the same batch
of one on both sides and computes the same bits):

 1. Dequantization, bits back: u ~ q(u|x) at grid 2^-k_u is *decoded* from
    the stream. Uniform: k_u uniform bits per pixel. Variational: the
    dequantizer's flow run backwards, ε decoded under N(0, I) and pushed
    through g and the sigmoid by the coding steps of coding.py (which
    encode their cell indices back).
 2. The flow, local bits-back: u goes through the layers in the model's
    order (logit preprocessing; per scale the couplings and batch norms,
    the squeeze, the factor-out), each element-wise step refining the grid
    by `layer_precision` bits and decoding its cell indices (coding.py).
 3. The prior: z under N(0, I), a bin of width 2^-prior_bins over [-16, 16)
    with the Gaussian's probability, the bits below it uniform.

Net cost per image: -log2 p(u) + log2 q(u|x) (the bound), up to O(2^-c)
per step. The first image has nothing to take bits back from: its decoded
values come from a seeded generator, and their information is the one-time
`initial_bits`. `Compressor.encode` returns the file; `decode` gives the
images back and checks them against the hash in the header.

File (every byte counts against bits/dim, so the header is binary, 20
bytes for 180 8x8 images): the magic b'RZ', the format version, the three
precisions packed in 2 bytes, 4 bytes of SHA-256 over the model's config and
weights, 1 byte of SHA-256 over the platform (TensorFlow version, CPU
kernels, device), LEB128 varints of the number of images, H, W, C and the
chain's restarts after image 0 (their count and gaps), 4 bytes of SHA-256
over the images; then the ANS payload, little-endian uint32 words. A wrong
model is refused by its fingerprint; a truncated or damaged file fails to
decode or to match the images' checksum: either way one CompressedFileError,
never wrong images.
"""

import dataclasses
import hashlib
import json
import math

import numpy as np
import tensorflow as tf

from real_nvp import coding, hardware
from real_nvp.coding import (CodingError, Permutation, StackExhausted, Stream, decode_step,
                             encode_step)
from real_nvp.squeeze import Squeeze, depth_to_space, space_to_depth

__all__ = ['Compressor', 'Precisions', 'CompressedFileError', 'read_header', 'MAGIC',
           'FORMAT_VERSION']

MAGIC = b'RZ'
FORMAT_VERSION = 1
_CHAIN_SEED = 0  # of the generator behind the first image's decoded values
PRIOR_RANGE = 16  # |z| and |ε| below this
_CHUNK_BITS = 16  # the prior's bits below its bin, pushed in chunks of this size
_SIGMOID_RANGE = 40.  # the variational dequantizer's v is cut to [-40, 40]


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


def _gaussian_bins(bits):
  """Probabilities of N(0, 1)'s bins [b, b + 1) 2^-bits over [-R, R)."""
  edges = np.arange(-PRIOR_RANGE * 2 ** bits, PRIOR_RANGE * 2 ** bits + 1) / 2. ** bits
  cdf = np.array([0.5 * math.erfc(-e / math.sqrt(2.)) for e in edges])
  tail = np.array([0.5 * math.erfc(e / math.sqrt(2.)) for e in edges])
  # Differences of the upper tail are accurate for positive edges.
  return np.where(edges[:-1] >= 0, tail[:-1] - tail[1:], cdf[1:] - cdf[:-1])


def _model_fingerprint(model):
  """4 bytes of SHA-256 over the config and every weight (BN averages too)."""
  digest = hashlib.sha256(model.config.to_json().encode())
  for variable in model.variables:
    digest.update(variable.path.encode())
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.digest()[:4]


def _fingerprint(platform):
  return hashlib.sha256(json.dumps(platform, sort_keys=True).encode()).digest()[:1]


def _checksum(images):
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).digest()[:4]


def _platform():
  gpus = tf.config.list_physical_devices('GPU')
  return {'tensorflow': tf.__version__, 'cpu_kernels': hardware.kernels_in_use(),
          'device': 'GPU' if gpus else 'CPU'}


class Compressor:
  """Codes uint8 images [N, H, W, C] with `model` (a RealNVP) in inference mode."""

  def __init__(self, model, precisions=Precisions()):
    self.model = model
    self.precisions = precisions
    self._prior = _gaussian_bins(precisions.prior_bins)
    self._fingerprint = _model_fingerprint(model)
    self._squeeze = Squeeze(name='dequantizer_squeeze')  # around its channel couplings

  # --- the file -------------------------------------------------------------------------

  def encode(self, images):
    """uint8 images [N, H, W, C] -> (file bytes, information: num_images,
    num_dims, file_bits, header_bits, initial_bits, chain_starts).

    An image that would take back more than the stack holds is coded again
    as a start of the chain; the stack is copied before an image only while
    it is short (below 4x the most any image has taken back), so the copies
    do not grow with the data set."""
    images = self._check_images(images)
    stream = Stream(encoding=True, seed=_CHAIN_SEED)
    chain_starts, most_taken = [], 0
    for index, image in enumerate(images):
      before = stream.valid_bits()
      snapshot = stream.snapshot() if before < 4 * most_taken + 1024 else None
      stream.chain_start = index == 0
      stream.low_water, drawn = before, stream.initial_bits
      try:
        self._encode_image(stream, image[None])
      except StackExhausted:  # It takes back more than the images before it left.
        if snapshot is None:
          raise CodingError('An image took back far more bits than any before it.') \
              from None
        stream.restore(snapshot)
        stream.chain_start = True
        self._encode_image(stream, image[None])
      most_taken = max(most_taken, before - stream.low_water,
                       int(stream.initial_bits - drawn))  # (a start draws instead)
      if stream.chain_start:
        chain_starts.append(index)
    header = _Header(self.precisions, self._fingerprint, _fingerprint(_platform()),
                     images.shape[0], images.shape[1:], _checksum(images),
                     tuple(chain_starts))
    data = header.to_bytes() + np.asarray(stream.words(), '<u4').tobytes()
    return data, {'num_images': int(images.shape[0]),
                  'num_dims': int(np.prod(images.shape[1:])),
                  'file_bits': 8 * len(data), 'header_bits': 8 * len(header.to_bytes()),
                  'initial_bits': stream.initial_bits, 'chain_starts': len(chain_starts)}

  def decode(self, data, allow_platform_mismatch=False):
    """bytes -> uint8 images [N, H, W, C], checked against the header's checksum."""
    header, payload = read_header(data)
    self._check_header(header, allow_platform_mismatch)
    stream = Stream(encoding=False, words=np.frombuffer(payload, '<u4').astype(np.uint32),
                    seed=_CHAIN_SEED)
    images = np.zeros((header.num_images,) + header.image_shape, np.uint8)
    try:
      for index in reversed(range(header.num_images)):
        stream.chain_start = index in header.chain_starts
        images[index] = self._decode_image(stream, header.image_shape)[0]
      complete = stream.is_empty()
    except (CodingError, ValueError, RuntimeError, OverflowError) as error:
      raise CompressedFileError(f'The file does not decode ({error}): it is damaged, '
                                'or the computation differs from the encoder\'s.') from None
    if not complete or _checksum(images) != header.images_checksum:
      raise CompressedFileError(
          'The decoded images do not match the file\'s checksum: the file is damaged '
          'or truncated, or the computation differs from the encoder\'s (TensorFlow '
          'build, CPU kernels or device; see the README).')
    return images

  def _check_images(self, images):
    images = np.asarray(images)
    shape = self.model.config.image_shape
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != shape:
      raise ValueError(f'Images must be uint8 [N, {", ".join(map(str, shape))}] '
                       f'(this model\'s shape); got {images.dtype} {list(images.shape)}.')
    if images.shape[0] < 1:
      raise ValueError('There are no images to compress.')
    if images.max() >= self.model.config.levels:
      raise ValueError(f'Pixel value {int(images.max())} is not below this model\'s '
                       f'levels={self.model.config.levels}.')
    return images

  def _check_header(self, header, allow_platform_mismatch):
    if header.model_fingerprint != self._fingerprint:
      raise CompressedFileError('The file was made by another model (another '
                                'architecture, checkpoint or run).')
    if header.image_shape != self.model.config.image_shape:
      raise CompressedFileError(f'The file holds images of shape {header.image_shape}; '
                                f'this model\'s are {self.model.config.image_shape}.')
    if header.platform_fingerprint != _fingerprint(_platform()) and not allow_platform_mismatch:
      raise CompressedFileError(
          f'The file was written on another platform (TensorFlow build, CPU kernels '
          f'or device; this one is {_platform()}): the networks may compute other bits '
          'here and decoding would fail. Decode where it was encoded, or pass '
          '--allow_platform_mismatch to try.')
    if header.precisions != self.precisions:
      self.precisions = header.precisions
      self._prior = _gaussian_bins(self.precisions.prior_bins)

  # --- one image ---------------------------------------------------------------------------

  def _encode_image(self, stream, image):
    k_u = self.precisions.dequantization
    pixels = _ints(image)
    if self.model.config.dequantization == 'uniform':
      noise = stream.decode_uniform([2 ** k_u] * pixels.size)
      u = (pixels << k_u) + _array(noise, pixels.shape)
    else:
      u = self._decode_variational(stream, image, pixels)
    z, k_z = self._encode_flow(stream, u, k_u)
    self._encode_prior(stream, z, k_z)

  def _decode_image(self, stream, shape):
    k_z = self._latent_grids(shape)
    z = self._decode_prior(stream, k_z)
    u = self._decode_flow(stream, z, k_z)
    k_u = self.precisions.dequantization
    pixels = u >> k_u
    image = _uint8(pixels)
    if self.model.config.dequantization == 'uniform':
      stream.encode_uniform(list((u - (pixels << k_u)).ravel()), [2 ** k_u] * u.size)
    else:
      self._encode_variational(stream, image, pixels, u)
    return image

  # --- the flow: the model's order (model.py) -----------------------------------------------

  def _encode_flow(self, stream, u, k_u):
    w, k = self._encode_layer(stream, self.model.preprocess, u, k_u)
    return self._encode_scale(stream, 0, w, k)

  def _encode_scale(self, stream, index, h, k):
    for layer in self.model.scales[index]:
      h, k = self._encode_layer(stream, layer, h, k)
    if index == len(self.model.scales) - 1:
      return h, np.full(h.shape, k, np.int64)
    factored, rest = np.split(h, 2, axis=-1)
    rest, k_rest = self._encode_scale(stream, index + 1, rest, k)
    return (depth_to_space(np.concatenate([factored, rest], -1)),
            depth_to_space(np.concatenate([np.full(factored.shape, k, np.int64), k_rest], -1)))

  def _decode_flow(self, stream, z, k_z):
    w, k = self._decode_scale(stream, 0, z, k_z)
    return self._decode_layer(stream, self.model.preprocess, w, k)[0]

  def _decode_scale(self, stream, index, h, k_h):
    """Inverse of _encode_scale: latent h (this scale's layout) -> data side."""
    if index < len(self.model.scales) - 1:
      h, k_h = space_to_depth(h), space_to_depth(k_h)
      factored, rest = np.split(h, 2, axis=-1)
      rest, k = self._decode_scale(stream, index + 1, rest, np.split(k_h, 2, axis=-1)[1])
      h = np.concatenate([factored, rest], -1)
    else:
      k = int(k_h.flat[0])
    for layer in reversed(self.model.scales[index]):
      h, k = self._decode_layer(stream, layer, h, k)
    return h, k

  # --- one layer ------------------------------------------------------------------------------

  def _encode_layer(self, stream, layer, x, k, context=None, invert=False):
    step_map = layer.coding_map(_floats(x, k), context)
    if invert:
      step_map = step_map.inverse()
    if isinstance(step_map, Permutation):
      return step_map.forward(x), k
    k_out = k + self.precisions.layer
    return _array(encode_step(stream, step_map, list(x.ravel()), k, k_out), x.shape), k_out

  def _decode_layer(self, stream, layer, y, k_out, context=None, invert=False):
    """Inverse of _encode_layer: latent-side y at k_out -> (data side, its grid)."""
    k_in = k_out - self.precisions.layer
    conditioning = layer.coding_conditioning(y.shape[1:])
    x = np.zeros(y.shape, object)
    if conditioning is not None:  # the identity there: x = floor(y 2^-c)
      x[:, conditioning] = y[:, conditioning] >> self.precisions.layer
    step_map = layer.coding_map(_floats(x, k_in), context)
    if invert:
      step_map = step_map.inverse()
    if isinstance(step_map, Permutation):
      return step_map.inverse_fn(y), k_out
    return _array(decode_step(stream, step_map, list(y.ravel()), k_in, k_out), y.shape), k_in

  # --- the prior ------------------------------------------------------------------------------

  def _latent_grids(self, shape):
    """The grid of every latent element after the flow, [1, H, W, C]."""
    return self._grids(0, np.zeros((1,) + shape, np.int64),
                       self.precisions.dequantization + self.precisions.layer)

  def _grids(self, index, h, k):
    """The latent grid of every element (the encoder's walk, without values)."""
    for layer in self.model.scales[index]:
      if isinstance(layer, Squeeze):
        h = space_to_depth(h)
      else:
        k += self.precisions.layer
    if index == len(self.model.scales) - 1:
      return np.full(h.shape, k, np.int64)
    factored, rest = np.split(h, 2, axis=-1)
    return depth_to_space(np.concatenate(
        [np.full(factored.shape, k, np.int64), self._grids(index + 1, rest, k)], -1))

  def _encode_prior(self, stream, z, k_z):
    """z (integers at grids k_z) under N(0, I): the bins (categorical),
    then the bits below them (uniform chunks), the lowest last. The next
    image takes its first bits back from the top of the stack: the lowest
    bits of z are the most nearly uniform (the bins follow the data's z,
    which is only roughly Gaussian), so its noise is close to a draw of q
    (the default digits run: 1.7 % shorter files than with the bins on top)."""
    bits = self.precisions.prior_bins
    flat, grids = list(z.ravel()), [int(k) for k in k_z.ravel()]
    bins = [v >> (k - bits) for v, k in zip(flat, grids)]
    symbols = [b + PRIOR_RANGE * 2 ** bits for b in bins]
    if min(symbols) < 0 or max(symbols) >= len(self._prior):
      raise CodingError(f'A latent value is outside [-{PRIOR_RANGE}, {PRIOR_RANGE}).')
    below = [v - (b << (k - bits)) for v, b, k in zip(flat, bins, grids)]
    stream.encode_categorical(symbols, self._prior)
    for index, counts in reversed(list(_chunks(grids, bits))):
      stream.encode_uniform([(below[p] >> (_CHUNK_BITS * index)) & (counts[i] - 1)
                             for i, p in enumerate(counts.positions)], counts)

  def _decode_prior(self, stream, k_z):
    bits = self.precisions.prior_bins
    grids = [int(k) for k in k_z.ravel()]
    below = [0] * len(grids)
    for index, counts in _chunks(grids, bits):
      for position, value in zip(counts.positions, stream.decode_uniform(counts)):
        below[position] += value << (_CHUNK_BITS * index)
    symbols = stream.decode_categorical(self._prior, len(grids))
    values = [((int(s) - PRIOR_RANGE * 2 ** bits) << (k - bits)) + b
              for s, k, b in zip(symbols, grids, below)]
    return _array(values, k_z.shape)

  # --- the variational dequantizer ----------------------------------------------------------

  def _variational_steps(self, image):
    """The dequantizer's coding pass from u's side to ε's, as (layer or map,
    context, invert) with permutations: frac -> v = logit(frac) -> g^-1."""
    dequantizer = self.model.dequantizer
    context = dequantizer.context(tf.constant(image))
    steps = [(_SigmoidStep(), None, False)]
    if dequantizer.channel:
      squeezed = tf.nn.space_to_depth(context, 2)
      steps.append((self._squeeze, None, False))
      steps += [(layer, squeezed, True) for layer in reversed(dequantizer.channel)]
      steps.append((self._squeeze, None, True))
    steps += [(layer, context, True) for layer in reversed(dequantizer.checkerboard)]
    return steps

  def _variational_grid(self, steps):
    return self.precisions.dequantization + self.precisions.layer * sum(
        not isinstance(layer, Squeeze) for layer, _, _ in steps)

  def _decode_variational(self, stream, image, pixels):
    """u ~ q(u|x) decoded from the stream (bits back): ε under N(0, I), then
    the pass from ε's side to u's side in decoding mode."""
    steps = self._variational_steps(image)
    k = self._variational_grid(steps)
    h = self._decode_prior(stream, np.full(pixels.shape, k, np.int64))
    for layer, context, invert in reversed(steps):
      h, k = self._decode_layer(stream, layer, h, k, context, invert)
    return (pixels << self.precisions.dequantization) + h

  def _encode_variational(self, stream, image, pixels, u):
    """Inverse of _decode_variational: gives the noise's bits back."""
    steps = self._variational_steps(image)
    h, k = u - (pixels << self.precisions.dequantization), self.precisions.dequantization
    for layer, context, invert in steps:
      h, k = self._encode_layer(stream, layer, h, k, context, invert)
    self._encode_prior(stream, h, np.full(h.shape, k, np.int64))


class _SigmoidStep:
  """frac in [0, 1) -> v = logit(frac), the dequantizer's sigmoid read backwards."""

  def coding_conditioning(self, event_shape):
    del event_shape

  def coding_map(self, x, context=None):
    del x, context
    return coding.MonotoneMap(
        lambda f: np.log(f) - np.log1p(-f), lambda v: 1. / (1. + np.exp(-v)),
        0., 1., -_SIGMOID_RANGE, _SIGMOID_RANGE)


class _Counts(list):
  """Cell counts of one chunk of the prior's low bits, with their positions."""

  def __init__(self, counts, positions):
    super().__init__(counts)
    self.positions = positions


def _chunks(grids, bits):
  """(chunk index, _Counts) of the bits below the prior's bins, low chunks first."""
  widths = [k - bits for k in grids]
  for index in range(-(-max(widths) // _CHUNK_BITS)):
    positions = [p for p, w in enumerate(widths) if w > _CHUNK_BITS * index]
    counts = [2 ** min(_CHUNK_BITS, widths[p] - _CHUNK_BITS * index) for p in positions]
    yield index, _Counts(counts, positions)


@dataclasses.dataclass
class _Header:
  """The file's header (see the module docstring), 20-odd bytes."""
  precisions: Precisions
  model_fingerprint: bytes
  platform_fingerprint: bytes
  num_images: int
  image_shape: tuple
  images_checksum: bytes
  chain_starts: tuple

  def to_bytes(self):
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
    header = _Header(precisions, model, platform, values[0], tuple(values[1:4]),
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


def _ints(image):
  return np.asarray(image, np.int64).astype(object)


def _array(values, shape):
  out = np.empty(len(values), object)
  out[:] = values
  return out.reshape(shape)


def _floats(x, k):
  """Grid integers -> float32 tensor of their values (correctly rounded)."""
  scale = 1 << k
  return tf.constant(np.array([v / scale for v in x.ravel()], np.float64)
                     .reshape(x.shape).astype(np.float32))


def _uint8(pixels):
  return np.asarray(pixels.astype(np.int64), np.uint8)
