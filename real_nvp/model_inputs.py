"""The model's inputs checked before any layer sees them: a clear error (shape,
dtype, value range) instead of a convolution's or a NaN."""

import tensorflow as tf

__all__ = ['check_shape', 'pixels', 'uint8_images', 'unless_empty']


def check_shape(images, image_shape, what):
  """Static check of rank and [H, W, C]; a clear error instead of a conv's."""
  shape = images.shape
  if shape.rank != 4 or tuple(shape[1:]) != tuple(image_shape):
    raise ValueError(
        f'{what} must have shape [batch, {", ".join(map(str, image_shape))}] '
        f'(this model\'s image shape). Received shape {shape}')


def pixels(config, dtype, values):
  """Float pixels [B, H, W, C] in [0, L) of a FlowConfig, or a clear error."""
  values = tf.convert_to_tensor(values, dtype)
  check_shape(values, config.image_shape, 'pixels')
  levels = float(config.levels)
  with tf.control_dependencies([
      tf.debugging.assert_greater_equal(
          values, tf.constant(0., values.dtype), message='pixels must be >= 0'),
      tf.debugging.assert_less(
          values, tf.constant(levels, values.dtype),
          message=f'pixels must be < levels={levels:g}')]):
    return tf.identity(values)  # carries the checks


def uint8_images(config, images):
  """uint8 [B, H, W, C] below the FlowConfig's `levels`, or a clear error."""
  images = tf.convert_to_tensor(images)
  if images.dtype != tf.uint8:
    raise TypeError(f'images must be uint8. Received dtype {images.dtype.name}')
  check_shape(images, config.image_shape, 'images')
  with tf.control_dependencies([tf.debugging.assert_less(
      tf.cast(images, tf.int32), config.levels,
      message=f'images must be < levels={config.levels}')]):
    return tf.identity(images)


def unless_empty(batch, compute, empty):
  """compute() for a batch with examples, else empty(): the convolutions'
  kernels fail on an empty batch (which the last batch of a split can give a
  replica)."""
  return tf.cond(tf.shape(batch)[0] > 0, compute, empty)
