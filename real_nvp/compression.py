"""Lossless compression of uint8 images with a trained RealNVP: a file of about
the model's bits/dim (bits-back coding of the dequantization, local bits-back
coding through every layer; Ho, Lohn & Abbeel, NeurIPS 2019), on fixed-point
grids that do not grow with depth (coding_steps.py), a batch at a time.

For each batch of B images (every network runs once per batch and layer, the
same batch on both sides, so both compute the same bits):

 1. Dequantization, bits back: u = x + frac, frac on the grid 2^-k_u, is
    *decoded* from the stack. Uniform: k_u uniform bits per pixel.
    Variational: ε decoded under the prior, then the dequantizer's flow tree
    walked ε -> v and its sigmoid v -> frac in decoding mode, ε and v on
    their own grid (Precisions.noise).
 2. The flow, local bits-back: u goes through the model's flow tree
    (`model.flow`): the logit preprocessing from the grid 2^-k_u to the
    latent grid 2^-k, every coupling with the batch norm after it as
    integer scale transforms on that grid, one per element (the coupling's
    transformed elements by the composed map, its kept ones by the batch
    norm's); the squeeze and the factor-out only move values.
 3. The prior: z under N(0, I) (`coding_steps.GaussianPrior`).

A batch is coded by batch_coder.py, a visitor of the flow trees
(flow_tree.py); this module drives the chain of batches. Net cost per image:
-log2 p(u) + log2 q(u|x) (the bound), up to the losses coding_steps.py
states. The chain's start: bits back needs bits to take back, so the first
images are coded by a conventional lossless codec (WebP lossless,
image_codec.py) and the stack starts from those bytes (HiLLoC, Townsend et
al. 2020): enough images for the first batch of one, then batches that grow
as the stack does, up to B, by a rule the decoder replays
(compressed_file.Ramp). The decoder, having coded every batch back, is
left with exactly those bytes. When the codec alone makes a smaller file,
the file is the codec's. The file: compressed_file.py. A wrong model is
refused by its fingerprint; a truncated or damaged file fails to decode or
to match the images' checksum: either way one CompressedFileError, never
wrong images.
"""

from concurrent import futures
import hashlib
import math

import numpy as np
import tensorflow as tf

from real_nvp import chain_start, hardware, image_codec
from real_nvp.ans_stream import StackExhausted, Stream
from real_nvp.batch_coder import BatchCoder
from real_nvp.coding_maps import CodingError
from real_nvp.compressed_file import (MAX_DIMS, CompressedFileError, Header, Precisions,
                                      Ramp, images_checksum, platform_fingerprint,
                                      read_header)

__all__ = ['Compressor', 'Precisions', 'CompressedFileError', 'read_header']

# The ramp (compressed_file.Ramp) counts on an image taking back _MARGIN times
# the bits the dry run's did, and leaving _GAIN_SHARE of what they left. No
# coding again was needed at 1.02 / 0.97 on the digits and 32x32 patches;
# these leave room for images that differ from the first batch.
_MARGIN = 1.05
_GAIN_SHARE = 0.9
_SLOWER = 1.25  # coding again, the take grows by this much


def _model_fingerprint(model):
  """4 bytes of SHA-256 over the config and every weight (BN averages too)."""
  digest = hashlib.sha256(model.config.to_json().encode())
  for variable in model.variables:
    digest.update(variable.path.encode())
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.digest()[:4]


def _platform():
  gpus = tf.config.list_physical_devices('GPU')
  return {'tensorflow': tf.__version__, 'cpu_kernels': hardware.kernels_in_use(),
          'device': 'GPU' if gpus else 'CPU'}


def dequantization_precision(dequantization):
  """The default grid of u, by the model's dequantization. Uniform noise is
  uniform over a pixel's cell, so k_u only says where the chain takes its
  bits (the logit step draws the latent point within the cell's image on
  the latent grid): at 4 bits the code is as long as at 8 (measured: docs/
  compression.md) and the first images take 4 bits a dimension less. A
  variational q varies within a pixel: on cells of 2^-4 the code is 1.4 %
  longer (the digits); at 2^-6 as long as at 2^-8 (the loss falls with the
  square of the cell: 1/16 of 1.4 %), and the first images take 2 bits a
  dimension less."""
  return 4 if dequantization == 'uniform' else 6


def latent_precision(levels, alpha, dequantization):
  """The default latent grid: the logit preprocessing maps a cell of 2^-k_u
  pixel units onto at least ℓ = 4 (1 - alpha) / L 2^(k - k_u) latent points
  (its least slope); k makes ℓ >= 12, a rounding loss below 1 / (8 ℓ^2 ln 2)
  = 0.001 bits where the slope is least (coding_steps.py; the cells at the
  ends lose more on coarser grids: docs/compression.md). A finer grid codes
  no shorter but makes every image take a bit a dimension more back before
  it gives any, which lengthens the chain's ramp of small batches
  (compressed_file.Ramp)."""
  return _logit_grid(levels, alpha, dequantization, points=12)


def least_latent_precision(levels, alpha, dequantization):
  """The coarsest latent grid on which every cell of 2^-k_u pixel units still
  holds a latent point."""
  return _logit_grid(levels, alpha, dequantization, points=1)


def _logit_grid(levels, alpha, dequantization, points):
  """The k at which the logit's least slope, 4 (1 - alpha) / L, maps a cell of
  2^-k_u pixel units onto at least `points` latent points."""
  return dequantization + max(0, math.ceil(math.log2(points * levels / (4. * (1. - alpha)))))


class Compressor:
  """Codes uint8 images [N, H, W, C] with `model` (a RealNVP) in inference
  mode, `batch_size` images per network call. `fallback`: the codec's own
  file where it is smaller (False: always bits-back after the chain's start,
  to measure the coder itself). The weights are those of its creation (the
  fingerprint, the networks' folded weights and the maps of value-free
  layers are read once): make a new one after changing them."""

  def __init__(self, model, precisions=Precisions(), batch_size=64, fallback=True):
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'batch_size={batch_size!r}: must be a positive integer.')
    dims = int(np.prod(model.config.image_shape))
    if batch_size * dims > MAX_DIMS:
      raise ValueError(f'batch_size={batch_size}: a batch would hold {batch_size * dims} '
                       f'values, more than {MAX_DIMS}; lower --batch_size.')
    self.model = model
    self.batch_size = batch_size
    self.fallback = fallback
    self.batch_coder = None
    self._set_precisions(precisions)
    self._fingerprint = _model_fingerprint(model)

  def _set_precisions(self, precisions):
    config = self.model.config
    if not precisions.dequantization:
      precisions = Precisions(dequantization_precision(config.dequantization),
                              precisions.latent, precisions.prior_bins)
    if not precisions.latent:
      latent = latent_precision(config.levels, config.alpha, precisions.dequantization)
      precisions = Precisions(precisions.dequantization,
                              min(max(latent, precisions.prior_bins), 40),
                              precisions.prior_bins)
    least = least_latent_precision(config.levels, config.alpha, precisions.dequantization)
    if precisions.latent < least:
      raise ValueError(
          f'--latent_precision={precisions.latent} is too coarse for this model '
          f'({config.levels} levels) at --dequantization_precision='
          f'{precisions.dequantization}: the logit preprocessing needs at least {least}. '
          'Raise --latent_precision, lower --dequantization_precision, or pass '
          '--latent_precision=0 (chosen from the model).')
    self.precisions = precisions
    self.batch_coder = (BatchCoder(self.model, precisions) if self.batch_coder is None
                        else self.batch_coder.at(precisions))

  # --- the file ---------------------------------------------------------------------------

  def encode(self, images, progress=None):
    """uint8 images [N, H, W, C] -> (file bytes, information: num_images,
    num_dims, file_bits, header_bits, start_images, start_bits (the codec's
    bits of the chain's start), batch_size, batches).

    `progress(images_done, num_images)`, if given, is called after each batch."""
    images = self._check_images(images)
    with futures.ThreadPoolExecutor(max_workers=1) as pool:
      # The codec's own file of every image, made beside the bits-back coding
      # (libwebp lets go of the GIL: +3-5 % of the time, against +25 % after
      # it), so that the fallback compares the two files exactly for any N.
      whole = pool.submit(image_codec.encode, images) if self.fallback else None
      payload, start, start_bytes, ramp = self._bits_back(images, progress)
      if payload is None or whole is not None:
        # without bits-back, the start holds every image: its bytes are the codec's file
        codec = start_bytes if whole is None else whole.result()
        if payload is None or len(codec) <= len(payload):
          # the codec's file: every image in the start, its bytes the payload
          start, start_bytes, payload, ramp = len(images), codec, codec, Ramp()
    header = Header(self.precisions, self._fingerprint, platform_fingerprint(_platform()),
                    len(images), images.shape[1:], self.batch_size, start,
                    len(start_bytes), ramp, images_checksum(images))
    batches = header.batches()  # () for the codec's file: no image after the start
    header = header.to_bytes()
    data = header + payload
    return data, {'num_images': int(images.shape[0]),
                  'num_dims': int(np.prod(images.shape[1:])),
                  'file_bits': 8 * len(data), 'header_bits': 8 * len(header),
                  'start_images': start, 'start_bits': 8 * len(start_bytes),
                  'batch_size': self.batch_size, 'batches': len(batches)}

  def _bits_back(self, images, progress):
    """(payload or None, start images, their codec bytes, ramp): the chain's
    start and the bits-back batches after it; None when the start takes
    every image."""
    ramp = self._ramp(images[:min(self.batch_size, len(images))])
    start, start_bytes = chain_start.start_images(images, ramp.take + 64)
    stream = None
    while stream is None and start < len(images):
      try:
        stream = self._encode_batches(images, start, start_bytes, ramp, progress)
      except _RampTooFast as slower:  # coded again from the start, with a slower ramp
        ramp = slower.ramp
        more, more_bytes = chain_start.start_images(images, ramp.take + 64)
        if more > start:
          start, start_bytes = more, more_bytes
    if stream is None:
      return None, start, start_bytes, ramp
    return np.asarray(stream.words(), '<u4').tobytes(), start, start_bytes, ramp

  def _ramp(self, batch):
    """The ramp of batch sizes from a dry run of `batch` on a stack of random
    bits: the most bits an image takes back before it gives any (its lowest
    point), and the bits it leaves, with margins."""
    bits = batch.size * (self.precisions.latent + 64) + 4096
    words = np.random.default_rng(0).integers(1, 2 ** 32, bits // 32, np.uint32)
    stream = Stream(encoding=True, words=words)
    before = stream.valid_bits()
    self.batch_coder.encode(stream, batch)
    take = (before - stream.low_water) / len(batch)
    gain = (stream.valid_bits() - before) / len(batch)
    return Ramp(math.ceil(_MARGIN * take) + 1, max(0, math.floor(_GAIN_SHARE * gain)))

  def _encode_batches(self, images, start, start_bytes, ramp, progress):
    """The bits-back batches after the chain's start, on a stack that starts
    from its bytes, sized by `ramp`; _RampTooFast if a batch finds fewer bits
    than the ramp assumed."""
    stream = Stream(encoding=True, initial=start_bytes)
    start_bits, position = 8 * len(start_bytes), start
    for size in ramp.sizes(len(images) - start, self.batch_size, start_bits):
      before = stream.valid_bits()
      try:
        self.batch_coder.encode(stream, images[position:position + size])
      except StackExhausted:
        raise _RampTooFast(ramp, position - start, before - start_bits) from None
      position += size
      if progress:
        progress(position, len(images))
    return stream

  def decode(self, data, allow_platform_mismatch=False, progress=None):
    """bytes -> uint8 images [N, H, W, C], checked against the header's checksum."""
    header, payload = read_header(data)
    self._check_header(header, allow_platform_mismatch)
    try:
      if header.start_images < header.num_images:
        stream = Stream(encoding=False, words=np.frombuffer(payload, '<u4'))
        parts, done = [], header.start_images
        for size in reversed(header.batches()):
          parts.append(self.batch_coder.decode(stream, size, header.image_shape))
          done += size
          if progress:
            progress(done - header.start_images, header.num_images - header.start_images)
        start_bytes = stream.remaining_bytes(header.start_bytes)
      else:
        parts, start_bytes = [], payload
      start = image_codec.decode(start_bytes, header.start_images, header.image_shape)
      images = np.concatenate([start] + parts[::-1])
    except (CodingError, ValueError, RuntimeError, OverflowError) as error:
      raise CompressedFileError(f'The file does not decode ({error}): it is damaged, '
                                'or the computation differs from the encoder\'s.') from None
    if images_checksum(images) != header.images_checksum:
      raise CompressedFileError(
          'The decoded images do not match the file\'s checksum: the file is damaged '
          'or truncated, or the computation differs from the encoder\'s (TensorFlow '
          'build, CPU kernels or device; see docs/compression.md).')
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
    if (header.platform_fingerprint != platform_fingerprint(_platform()) and
        not allow_platform_mismatch):
      raise CompressedFileError(
          f'The file was written on another platform (TensorFlow build, CPU kernels '
          f'or device; this one is {_platform()}): the networks may compute other bits '
          'here and decoding would fail. Decode where it was encoded, or pass '
          '--allow_platform_mismatch to try.')
    if header.precisions != self.precisions:
      try:
        self._set_precisions(header.precisions)
      except (ValueError, CodingError) as error:
        raise CompressedFileError(f'The file\'s precisions do not suit this model '
                                  f'({error}); it is damaged or another model\'s.') from None


class _RampTooFast(Exception):
  """A batch found fewer bits than `ramp` assumed, after `done` images had
  left `gained` bits on the stack. `.ramp`: the ramp to code again with: the
  gain that was measured, with its margin, and a larger take (× _SLOWER)."""

  def __init__(self, ramp, done, gained):
    super().__init__()
    gain = ramp.gain if not done else min(ramp.gain, math.floor(_GAIN_SHARE * gained / done))
    self.ramp = Ramp(math.ceil(_SLOWER * ramp.take), max(0, gain))
