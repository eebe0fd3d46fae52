"""Lossless compression of uint8 images with a trained RealNVP: a file of about
the model's bits/dim (bits-back coding of the dequantization, local bits-back
coding through every layer; Ho, Lohn & Abbeel, NeurIPS 2019).

For each image x, one at a time (so that every network sees the same batch
of one on both sides and computes the same bits):

 1. Dequantization, bits back: u ~ q(u|x) at grid 2^-k_u is *decoded* from
    the stream. Uniform: k_u uniform bits per pixel. Variational: ε decoded
    under N(0, I), then the dequantizer's flow tree walked ε -> v and the
    sigmoid, in decoding mode (their steps encode their cell indices back).
 2. The flow, local bits-back: u goes through the model's flow tree
    (`model.flow`), each element-wise step refining the grid by
    `layer_precision` bits and decoding its cell indices (coding_steps.py);
    the squeeze and the factor-out only move values.
 3. The prior: z under N(0, I) (`coding_steps.GaussianPrior`).

The coder is a visitor of the flow trees (flow_tree.py): a run of layers
codes its layers' maps (coding_maps.py), a factor-out splits, recurses and
concatenates, an inverted node walks the other way; computing the grids is
the same walk without values. Net cost per image: -log2 p(u) + log2 q(u|x)
(the bound), up to O(2^-c) per step. The first image has nothing to take
bits back from: its decoded values come from a seeded generator, and their
information is the one-time `initial_bits`. The file: compressed_file.py.
A wrong model is refused by its fingerprint; a truncated or damaged file
fails to decode or to match the images' checksum: either way one
CompressedFileError, never wrong images.
"""

import hashlib

import numpy as np
import tensorflow as tf

from real_nvp import flow_tree, hardware, layer_run
from real_nvp.ans_stream import StackExhausted, Stream
from real_nvp.coding_maps import CodingError
from real_nvp.coding_steps import GaussianPrior, SigmoidStep, decode_step, encode_step
from real_nvp.compressed_file import (CompressedFileError, Header, Precisions,
                                      images_checksum, platform_fingerprint, read_header)

__all__ = ['Compressor', 'Precisions', 'CompressedFileError', 'read_header']

_CHAIN_SEED = 0  # of the generator behind the first image's decoded values


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


class Compressor:
  """Codes uint8 images [N, H, W, C] with `model` (a RealNVP) in inference mode."""

  def __init__(self, model, precisions=Precisions()):
    self.model = model
    self.precisions = precisions
    self._prior = GaussianPrior(precisions.prior_bins)
    self._fingerprint = _model_fingerprint(model)

  # --- the file: the chain of images ----------------------------------------------------

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
    header = Header(self.precisions, self._fingerprint, platform_fingerprint(_platform()),
                    images.shape[0], images.shape[1:], images_checksum(images),
                    tuple(chain_starts)).to_bytes()
    data = header + np.asarray(stream.words(), '<u4').tobytes()
    return data, {'num_images': int(images.shape[0]),
                  'num_dims': int(np.prod(images.shape[1:])),
                  'file_bits': 8 * len(data), 'header_bits': 8 * len(header),
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
    if not complete or images_checksum(images) != header.images_checksum:
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
      self.precisions = header.precisions
      self._prior = GaussianPrior(self.precisions.prior_bins)

  # --- one image ----------------------------------------------------------------------------

  def _encode_image(self, stream, image):
    k_u = self.precisions.dequantization
    pixels = np.asarray(image, np.int64).astype(object)
    if self.model.config.dequantization == 'uniform':
      noise = stream.decode_uniform([2 ** k_u] * pixels.size)
      u = (pixels << k_u) + _objects(noise, pixels.shape)
    else:
      u = (pixels << k_u) + self._variational_fraction(stream, image)
    z = self._walk(stream, self.model.flow, _Coded(u, _full(u.shape, k_u)), inverse=False)
    self._prior.encode(stream, z.h, z.k)

  def _decode_image(self, stream, shape):
    k_u = self.precisions.dequantization
    k_z = self._grids(self.model.flow, _full((1,) + shape, k_u))
    z = _Coded(self._prior.decode(stream, k_z), k_z)
    u = self._walk(stream, self.model.flow, z, inverse=True).h
    pixels = u >> k_u
    image = np.asarray(pixels.astype(np.int64), np.uint8)
    fraction = u - (pixels << k_u)
    if self.model.config.dequantization == 'uniform':
      stream.encode_uniform(list(fraction.ravel()), [2 ** k_u] * u.size)
    else:
      self._give_back_variational(stream, image, fraction)
    return image

  # --- the variational dequantizer: ε <-> v (its flow tree) <-> frac (the sigmoid) ----------

  def _variational_fraction(self, stream, image):
    """frac = u - x ~ q at grid 2^-k_u, decoded from the stream (bits back):
    ε under N(0, I), then ε -> v -> frac in decoding mode."""
    tree, context = self._u_side(image)
    k_eps = self._grids(tree, _full(image.shape, self.precisions.dequantization))
    eps = _Coded(self._prior.decode(stream, k_eps), k_eps, context)
    return self._walk(stream, tree, eps, inverse=True).h

  def _give_back_variational(self, stream, image, fraction):
    """Inverse of `_variational_fraction`: gives the noise's bits back."""
    tree, context = self._u_side(image)
    frac = _Coded(fraction, _full(fraction.shape, self.precisions.dequantization), context)
    eps = self._walk(stream, tree, frac, inverse=False)
    self._prior.encode(stream, eps.h, eps.k)

  def _u_side(self, image):
    """The dequantizer read from u's side: frac -> v = logit(frac) -> ε = g^-1(v)
    (its flow tree inverted), and its context of the image."""
    dequantizer = self.model.dequantizer
    tree = flow_tree.Chain([flow_tree.Steps([SigmoidStep()]),
                            flow_tree.Inverted(dequantizer.flow)])
    return tree, dequantizer.context(tf.constant(image))

  # --- walks of a flow tree ---------------------------------------------------------------

  def _walk(self, stream, tree, value, inverse):
    """Codes `value` through `tree`; the grids refine away from the data
    (the flow walked data -> latent, the dequantizer's u side walked u -> ε)."""
    return tree.walk(_StepCoder(stream, self.precisions.layer, refine=not inverse),
                     value, inverse)

  def _grids(self, tree, k, inverse=False):
    """The grid of every element after the tree (the coding walk without values)."""
    return tree.walk(_GridWalk(self.precisions.layer), k, inverse)


class _Coded:
  """A coding walk's value: integers h on grids k (arrays of one shape), and
  the context in h's layout (the variational dequantizer's; else None)."""

  def __init__(self, h, k, context=None):
    self.h, self.k, self.context = h, k, context


class _StepCoder(flow_tree.Visitor):
  """Codes each layer's map on `stream`. Where the walk refines the grids
  (`refine`), a step is an encode step (its cell indices decoded: bits
  back), else a decode step (indices encoded back); the step's map runs
  from the side the walk comes from to the finer one, so a layer walked
  against its own direction while refining (or along it while coarsening)
  is coded by its inverted map."""

  def __init__(self, stream, precision, refine):
    self.stream, self.precision, self.refine = stream, precision, refine

  def steps(self, node, value, inverse):
    for layer in (reversed(node.layers) if inverse else node.layers):
      value = self._layer(layer, value, inverse)
    return value

  def _layer(self, layer, value, inverse):
    context = layer_run.advance_context([layer], value.context, inverse)
    permutation = layer.permutation()
    if permutation is not None:
      move = permutation.inverse_fn if inverse else permutation.forward
      return _Coded(move(value.h), move(value.k), context)
    invert = inverse == self.refine
    k = _uniform_grid(value.k)
    flat = list(value.h.ravel())
    if self.refine:
      k_out = k + self.precision
      step_map = _oriented(layer.coding_map(_floats(value.h, k), value.context), invert)
      out = encode_step(self.stream, step_map, flat, k, k_out)
    else:
      k_out = k - self.precision
      kept = np.zeros(value.h.shape, object)
      conditioning = layer.coding_conditioning(value.h.shape[1:])
      if conditioning is not None:  # the identity there: x = floor(y 2^-c)
        kept[:, conditioning] = value.h[:, conditioning] >> self.precision
      step_map = _oriented(layer.coding_map(_floats(kept, k_out), value.context), invert)
      out = decode_step(self.stream, step_map, flat, k_out, k)
    return _Coded(_objects(out, value.h.shape), _full(value.h.shape, k_out), context)

  def split(self, value):
    (h_out, h_rest), (k_out, k_rest) = (np.split(value.h, 2, axis=-1),
                                        np.split(value.k, 2, axis=-1))
    return _Coded(h_out, k_out), _Coded(h_rest, k_rest, value.context)

  def merge(self, value, factored, rest):
    return _Coded(np.concatenate([factored.h, rest.h], -1),
                  np.concatenate([factored.k, rest.k], -1), value.context)


class _GridWalk(flow_tree.Visitor):
  """The grids alone: each element-wise step refines by `precision` bits
  (in either direction of the walk), a permutation moves them."""

  def __init__(self, precision):
    self.precision = precision

  def steps(self, node, k, inverse):
    for layer in (reversed(node.layers) if inverse else node.layers):
      permutation = layer.permutation()
      if permutation is None:
        k = k + self.precision
      else:
        k = permutation.inverse_fn(k) if inverse else permutation.forward(k)
    return k

  def split(self, k):
    return tuple(np.split(k, 2, axis=-1))

  def merge(self, k, factored, rest):
    return np.concatenate([factored, rest], -1)


def _oriented(step_map, invert):
  return step_map.inverse() if invert else step_map


def _uniform_grid(k):
  grids = np.unique(k)
  if grids.size != 1:
    raise CodingError('A coding step received elements on different grids.')
  return int(grids[0])


def _full(shape, k):
  return np.full(shape, k, np.int64)


def _objects(values, shape):
  out = np.empty(len(values), object)
  out[:] = values
  return out.reshape(shape)


def _floats(x, k):
  """Grid integers -> float32 tensor of their values (correctly rounded)."""
  scale = 1 << k
  return tf.constant(np.array([v / scale for v in x.ravel()], np.float64)
                     .reshape(x.shape).astype(np.float32))
