"""SavedModel export: sampling and scoring without this project's code.

    loaded = tf.saved_model.load(path)
    images = loaded.sample(num_samples=16, temperature=0.7, seed=0)['images']  # uint8
    int(loaded.levels), loaded.image_shape.numpy(), loaded.config_json.numpy()

Signatures (H, W, C and the number of levels L fixed by the trained model):
  sample(num_samples: int32, temperature: float32, seed: int32)
      -> {'images': uint8 [n, H, W, C]}; 1 <= n <= MAX_SAMPLES (16,384) per
         call, drawn in batches of at most SAMPLE_BATCH (256); temperature
         finite and >= 0
  log_prob(pixels: float32 [n, H, W, C] in [0, L))
      -> {'log_prob': float32 [n]}, nats, of dequantized pixel values
  bits_per_dim(images: uint8 [n, H, W, C], seed: int32)
      -> {'bits_per_dim': float32 [n]}, one draw of the model's own
         dequantizer (uniform or variational): the bound
  bits_per_dim_iw(images: uint8 [n, H, W, C], seed: int32, num_samples: int32)
      -> {'bits_per_dim': float32 [n], 'bits_per_dim_iw': float32 [n]}: the
         bound (mean over K = num_samples draws) and the K-draw
         importance-weighted estimate, which is lower; 1 <= K <=
         MAX_DEQUANT_SAMPLES (65,536) per call, drawn one at a time, so
         memory does not grow with K
  encode(images: uint8 [n, H, W, C])
      -> {'z': float32 [n, H, W, C], 'scale_1': ..., 'scale_S': ...}
  decode(z: float32 [n, H, W, C]) -> {'images': uint8 [n, H, W, C]}, z finite

Inputs are checked: pixel values below L (and >= 0), finite latents, shapes
and dtypes (by the signatures); a violated check raises InvalidArgumentError
with a message that names it. An empty batch gives empty outputs. The
export is written to a temporary directory and renamed into place, so the
export directory is always complete or absent.
"""

import contextlib
import json
import logging
import os

import tensorflow as tf
from absl import logging as absl_logging

from real_nvp import checkpoints, storage
from real_nvp.dequantization import MAX_DEQUANT_SAMPLES

__all__ = ['export_saved_model', 'MAX_SAMPLES', 'SAMPLE_BATCH']

MAX_SAMPLES = 16_384
SAMPLE_BATCH = 256


def _traced(function, *input_signature):
  return tf.function(function, input_signature=list(input_signature), autograph=False)


class _ExportModule(tf.Module):
  """Holds the model's variables and the exported tf.functions."""

  def __init__(self, model):
    super().__init__(name='real_nvp')
    # Keras 3 variables are not tf.Module-trackable; their tf.Variables are.
    self.model_variables = list(checkpoints.model_weights(model).values())
    self._model = model
    config = model.config
    image = tf.TensorSpec((None,) + config.image_shape, tf.uint8, name='images')
    pixels = tf.TensorSpec((None,) + config.image_shape, tf.float32, name='pixels')
    latent = tf.TensorSpec((None,) + config.image_shape, tf.float32, name='z')
    # Variables, so that the loaded object carries them as attributes.
    self.image_shape = tf.Variable(config.image_shape, dtype=tf.int32, trainable=False)
    self.levels = tf.Variable(config.levels, dtype=tf.int32, trainable=False)
    self.config_json = tf.Variable(config.to_json(), trainable=False)

    # No autograph: the model is written in TF's own control flow, so
    # converting its code would only lengthen the six traces.
    self.sample = _traced(self._sample, tf.TensorSpec([], tf.int32, name='num_samples'),
                          tf.TensorSpec([], tf.float32, name='temperature'),
                          tf.TensorSpec([], tf.int32, name='seed'))
    self.log_prob = _traced(self._log_prob, pixels)
    self.bits_per_dim = _traced(self._bits_per_dim, image,
                                tf.TensorSpec([], tf.int32, name='seed'))
    self.bits_per_dim_iw = _traced(self._bits_per_dim_iw, image,
                                   tf.TensorSpec([], tf.int32, name='seed'),
                                   tf.TensorSpec([], tf.int32, name='num_samples'))
    self.encode = _traced(self._encode, image)
    self.decode = _traced(self._decode, latent)

  def _sample(self, num_samples, temperature, seed):
    with tf.control_dependencies([
        tf.debugging.assert_greater_equal(
            num_samples, 1, message='num_samples must be >= 1'),
        tf.debugging.assert_less_equal(
            num_samples, MAX_SAMPLES,
            message=f'num_samples must be <= {MAX_SAMPLES} per call; call again '
                    'with other seeds for more')]):
      # RealNVP.sample checks the temperature.
      batch = tf.minimum(num_samples, SAMPLE_BATCH)
    # Batch i is drawn with the stateless seed (seed, i): for n <= SAMPLE_BATCH
    # the same images as RealNVP.sample(n, temperature, seed).
    batches = (num_samples + batch - 1) // batch
    images = tf.map_fn(
        lambda i: self._model.sample(batch, temperature, seed=tf.stack(
            [tf.cast(seed, tf.int64), tf.cast(i, tf.int64)])),
        tf.range(batches), fn_output_signature=tf.TensorSpec(
            (None,) + self._model.config.image_shape, tf.uint8))
    images = tf.reshape(images, tf.concat([[-1], self._model.config.image_shape], 0))
    return {'images': images[:num_samples]}

  def _log_prob(self, pixels):
    return {'log_prob': self._model.log_prob(pixels)}

  def _bits_per_dim(self, images, seed):
    return {'bits_per_dim': self._model.bits_per_dim(images, seed=seed)}

  def _bits_per_dim_iw(self, images, seed, num_samples):
    with tf.control_dependencies([
        tf.debugging.assert_positive(num_samples, message='num_samples must be >= 1'),
        tf.debugging.assert_less_equal(
            num_samples, MAX_DEQUANT_SAMPLES,
            message=f'num_samples must be <= {MAX_DEQUANT_SAMPLES} per call')]):
      num_samples = tf.identity(num_samples)
    return self._model.bits_per_dim_estimates(images, seed=seed,
                                              num_samples=num_samples)

  def _encode(self, images):
    latents = self._model.encode(images)
    outputs = {f'scale_{i + 1}': z for i, z in enumerate(latents)}
    outputs['z'] = self._model.merge_latents(latents)
    return outputs

  def _decode(self, z):
    return {'images': self._model.decode(z)}


def export_saved_model(model, export_dir):
  """Writes `model` as a SavedModel with the signatures of the module docstring,
  atomically (see `storage.export_atomically`)."""
  module = _ExportModule(model)
  signatures = {name: getattr(module, name) for name in
                ('sample', 'log_prob', 'bits_per_dim', 'bits_per_dim_iw',
                 'encode', 'decode')}

  def write(directory):
    with _tensorflow_warnings_only(), model.shared_flow_traces():
      tf.saved_model.save(module, directory, signatures=signatures)
    with open(os.path.join(directory, 'real_nvp_config.json'), 'w') as f:
      json.dump(json.loads(model.config.to_json()), f, indent=2, sort_keys=True)

  return storage.export_atomically(write, export_dir)


@contextlib.contextmanager
def _tensorflow_warnings_only():
  """TensorFlow's own INFO lines while saving say nothing to a user: one per
  signature lists every captured variable (kilobytes each, that the export
  renames), the others where the assets, the shards and the
  fingerprint went. They come through TensorFlow's logger and through
  absl's (which this project logs with too, but not while saving); absl's
  through its verbosity, which the save itself reads and sets back while
  listing each object's functions. Warnings still show."""
  logger, verbosity = tf.get_logger(), absl_logging.get_verbosity()
  level = logger.level
  logger.setLevel(max(level, logging.WARNING))
  absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))  # absl: lower is quieter
  try:
    yield
  finally:
    logger.setLevel(level)
    absl_logging.set_verbosity(verbosity)
