"""The paper's TFDS data sets (§4.1): each one's TFDS name, splits, image
shape, horizontal flips, preprocessing and preset; data.py loads them.

TensorFlow-free at import (the preprocessing imports it when it runs), so
that the command line lists these names before TensorFlow loads.
"""

__all__ = ['TFDS_DATASETS']


def _lsun_transform(image, seed):
  """Shorter side to 96, then a random (training) or central 64x64 crop."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  size = tf.cast(tf.round(shape * 96. / tf.reduce_min(shape)), tf.int32)
  image = tf.image.resize(image, size, antialias=True)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0., 255.), tf.uint8)
  if seed is None:
    offset = (size - 64) // 2
    return image[offset[0]:offset[0] + 64, offset[1]:offset[1] + 64]
  return tf.image.stateless_random_crop(image, (64, 64, 3), seed=seed)


def _celeba_transform(image, seed):
  """Central 148x148 crop resized to 64x64 (deterministic)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  del seed
  offset = (tf.shape(image)[:2] - 148) // 2
  image = image[offset[0]:offset[0] + 148, offset[1]:offset[1] + 148]
  image = tf.image.resize(image, (64, 64), antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0., 255.), tf.uint8)


# name: (TFDS name, train split, held-out split, shape, flip, transform, preset)
TFDS_DATASETS = {
    'cifar10': ('cifar10', 'train', 'test', (32, 32, 3), True, None, 'cifar10'),
    'mnist': ('mnist', 'train', 'test', (28, 28, 1), False, None, 'mnist'),
    'imagenet32': ('downsampled_imagenet/32x32', 'train', 'validation',
                   (32, 32, 3), False, None, 'imagenet32'),
    'imagenet64': ('downsampled_imagenet/64x64', 'train', 'validation',
                   (64, 64, 3), False, None, 'imagenet64'),
    'lsun_bedroom': ('lsun/bedroom', 'train', 'validation', (64, 64, 3), True,
                     _lsun_transform, 'lsun'),
    'lsun_tower': ('lsun/tower', 'train', 'validation', (64, 64, 3), True,
                   _lsun_transform, 'lsun'),
    'lsun_church_outdoor': ('lsun/church_outdoor', 'train', 'validation',
                            (64, 64, 3), True, _lsun_transform, 'lsun'),
    'celeba': ('celeb_a', 'train', 'validation', (64, 64, 3), True,
               _celeba_transform, 'celeba'),
}
